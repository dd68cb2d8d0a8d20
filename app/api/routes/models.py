from fastapi import APIRouter

from app.api.deps import SettingsDep
from app.models import LayerRow, ModelInfo, ModelOptionsIn, ParameterCount
from app.services import catalog

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelInfo])
def list_models() -> list[ModelInfo]:
    """The registered models with their parameter counts and preset hyperparameters."""
    return [ModelInfo(**model) for model in catalog.list_models()]


@router.get("/{name}/layers", response_model=list[LayerRow])
def model_layers(name: str) -> list[LayerRow]:
    """The model's layers with their parameter counts (404 lists the valid names)."""
    return [LayerRow(**row) for row in catalog.model_layers(name)]


@router.post("/{name}/parameters", response_model=ParameterCount)
def count_parameters(name: str, options_in: ModelOptionsIn, settings: SettingsDep) -> ParameterCount:
    """Parameter counts of the model built with these options (422 names a bad option, or a model
    past MAX_MODEL_PARAMETERS). Counted on torch's meta device: nothing is allocated, nothing changes."""
    total, trainable = catalog.parameter_counts_for_request(name, options_in.model_options, settings=settings)
    return ParameterCount(parameters=total, trainable_parameters=trainable)
