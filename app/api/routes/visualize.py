"""What a run's checkpoint has learnt: first-layer filters, feature maps, confusion matrix.

Every endpoint computes from the checkpoint in a worker thread (plain `def`, or
run_in_threadpool for the upload), so a forward pass never blocks the event
loop. 409 while the run has no checkpoint yet, 404 for an unknown run.
"""

import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from app.api.deps import RunIdDep, SessionDep, SettingsDep, TokenDep
from app.models import ActivationsPublic, ConfusionPublic, VisualizeInfo
from app.services import visualize
from app.services.errors import UploadRejected



def _work_slots(request: Request) -> threading.BoundedSemaphore:
    state = request.app.state
    if getattr(state, "visualize_slots", None) is None:
        state.visualize_slots = threading.BoundedSemaphore(state.settings.VISUALIZE_MAX_CONCURRENT)
    return state.visualize_slots


async def visualize_slot(request: Request) -> AsyncIterator[None]:
    """429 past VISUALIZE_MAX_CONCURRENT requests at once: forward passes and model loads run in the
    web process's thread pool, which the pages need too; waiting requests would starve it."""
    slots = _work_slots(request)
    if not slots.acquire(blocking=False):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": "2"},
                            detail="the server is busy with other visualisations (VISUALIZE_MAX_CONCURRENT); "
                                   "try again in a moment")
    try:
        yield
    finally:
        slots.release()


router = APIRouter(prefix="/runs/{run_id}/visualize", tags=["visualize"], dependencies=[Depends(visualize_slot)])

PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}, "description": "A PNG image"}}
UPLOAD_FIELD = "file"
UPLOAD_BODY_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": [UPLOAD_FIELD],
    "properties": {UPLOAD_FIELD: {"type": "string", "format": "binary",
                                  "description": "A PNG, JPEG or WebP image of at most 5 MB and 4096×4096 px"}},
}}}}}

ClassQuery = Annotated[str, Query(max_length=200, description="A class of the run's dataset, e.g. cat")]
IndexQuery = Annotated[int, Query(ge=0, le=1_000_000, description="Which test image of that class (0 = first)")]


def _png(data: bytes) -> Response:
    # Cached per checkpoint on the server; the browser may keep it briefly (a running run changes it).
    return Response(content=data, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


@router.get("", response_model=VisualizeInfo)
def visualize_info(run_id: RunIdDep, session: SessionDep, settings: SettingsDep) -> VisualizeInfo:
    """Classes and test images per class of the run's dataset, and the layers the figures show."""
    return visualize.info(session=session, run_id=run_id, settings=settings)


@router.get("/filters.png", response_class=Response, responses=PNG_RESPONSE)
def filters_png(run_id: RunIdDep, session: SessionDep, settings: SettingsDep) -> Response:
    """The first conv layer's filters as an RGB grid (the study's fig 3.7)."""
    return _png(visualize.filter_grid_png(session=session, run_id=run_id, settings=settings))


@router.get("/activations", response_model=ActivationsPublic)
def test_image_activations(run_id: RunIdDep, class_name: ClassQuery, index: IndexQuery, session: SessionDep,
                           settings: SettingsDep) -> ActivationsPublic:
    """One test image, its first- and last-layer feature maps (figs 3.4–3.6) and the prediction."""
    return visualize.test_image_activations(session=session, run_id=run_id, settings=settings,
                                            class_name=class_name, index=index)


@router.get("/activations/{layer}.png", response_class=Response, responses=PNG_RESPONSE)
def test_image_activation_png(run_id: RunIdDep, layer: Literal["input", "first", "last"], class_name: ClassQuery,
                              index: IndexQuery, session: SessionDep, settings: SettingsDep) -> Response:
    """One image of GET /activations as a PNG: the input, or the first or last layer's grid."""
    result = visualize.test_image_activations(session=session, run_id=run_id, settings=settings,
                                              class_name=class_name, index=index)
    return _png(visualize.activation_png(result, layer))


@router.post("/activations", response_model=ActivationsPublic, dependencies=[TokenDep],
             openapi_extra=UPLOAD_BODY_DOC,
             responses={413: {"description": "Larger than 5 MB"}, 415: {"description": "Not PNG, JPEG or WebP"},
                        422: {"description": "Truncated, corrupt, or too many pixels"}})
async def upload_image_activations(run_id: RunIdDep, request: Request, session: SessionDep,
                                   settings: SettingsDep) -> ActivationsPublic:
    """An uploaded image's feature maps and prediction; the image is used in memory and never stored."""
    data = await _read_upload(request, settings.MAX_UPLOAD_BYTES)
    try:
        return await run_in_threadpool(visualize.upload_activations, session=session, run_id=run_id,
                                       settings=settings, data=data)
    except UploadRejected as err:
        raise HTTPException(status_code=err.status_code, detail=str(err)) from None


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    """The form's file, at most `max_bytes` (MAX_UPLOAD_BYTES). The app's body limit already
    stopped a larger body while it streamed in (413), declared or chunked."""
    form = await request.form(max_files=1, max_fields=1)
    try:
        upload = form.get(UPLOAD_FIELD)
        if not isinstance(upload, UploadFile):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                detail=f"Choose an image to upload (multipart field {UPLOAD_FIELD!r}).")
        data = await upload.read(max_bytes + 1)  # one byte more than allowed tells it is too large
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            detail=f"The file is larger than {max_bytes / 2**20:g} MB (MAX_UPLOAD_BYTES); "
                                   "upload a smaller PNG, JPEG or WebP image.")
    return data


@router.get("/confusion", response_model=ConfusionPublic)
def confusion(run_id: RunIdDep, session: SessionDep, settings: SettingsDep) -> ConfusionPublic:
    """Confusion matrix and per-class accuracy over the run's test split, with their Plotly figures."""
    return visualize.confusion(session=session, run_id=run_id, settings=settings)
