from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from app.api.deps import SessionDep, SettingsDep, TokenDep
from app.core.guards import declared_length
from app.models import DatasetPublic, DatasetsPublic
from app.services import dataset_uploads, datasets

router = APIRouter(prefix="/datasets", tags=["datasets"])

NameParam = Annotated[str, Path(max_length=64, description="A dataset name (GET /api/datasets)")]


def _public(info: datasets.DatasetInfo) -> DatasetPublic:
    return DatasetPublic(**datasets.public_fields(info))


@router.get("", response_model=DatasetsPublic)
def list_datasets(settings: SettingsDep) -> DatasetsPublic:
    """The sample, CIFAR-10 (present or downloadable), and image folders under DATASETS_DIR."""
    data = [_public(info) for info in datasets.list_datasets(settings=settings)]
    return DatasetsPublic(data=data, count=len(data), default=datasets.default_dataset(settings))


@router.get("/{name}", response_model=DatasetPublic)
def get_dataset(name: NameParam, settings: SettingsDep) -> DatasetPublic:
    return _public(datasets.get_dataset(settings=settings, name=name))


@router.get("/{name}/thumbnails.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def thumbnails(name: NameParam, settings: SettingsDep,
               per_class: Annotated[int, Query(ge=1, le=16)] = 8) -> Response:
    """A PNG grid: one row per class (in the dataset's class order), `per_class` training images each."""
    png = datasets.thumbnail_grid(settings=settings, name=name, per_class=per_class)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.post("", response_model=DatasetPublic, status_code=status.HTTP_202_ACCEPTED, dependencies=[TokenDep],
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def upload_dataset(request: Request, settings: SettingsDep,
                         name: Annotated[str, Query(max_length=64, description="The new dataset's name")]
                         ) -> DatasetPublic:
    """Upload an image-folder dataset as the raw body: a .zip, .tar or .tar.gz.

    Layout: `train/<class>/*` + `test/<class>/*`, or one `<class>/*` tree (split
    here by DATASET_TEST_FRACTION). The body may be at most DATASET_UPLOAD_MAX_BYTES
    (413), counted as it streams in. 202: the archive is then extracted and
    checked in the background; GET /api/datasets/{name} shows the progress, and
    "failed" with the reason (an unsafe member, a bad layout, a corrupt image by name).
    """
    try:
        await dataset_uploads.receive(request.stream(), settings=settings, name=name,
                                      declared_length=declared_length(request.headers.get("content-length")))
    except dataset_uploads.UploadTooLarge as err:
        raise HTTPException(status_code=413, detail=str(err)) from None
    dataset_uploads.start_processing(settings=settings, name=name)
    return _public(datasets.get_dataset(settings=settings, name=name))


@router.post("/cifar10/download", response_model=DatasetPublic, status_code=status.HTTP_202_ACCEPTED,
             dependencies=[TokenDep])
def download_cifar10(settings: SettingsDep) -> DatasetPublic:
    """Download CIFAR-10 into DATASETS_DIR (needs network) in the background; GET /api/datasets/cifar10 follows it."""
    datasets.start_cifar10_download(settings=settings)
    return _public(datasets.get_dataset(settings=settings, name=datasets.CIFAR10_NAME))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, dependencies=[TokenDep])
def delete_dataset(name: NameParam, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete an uploaded image folder (or the downloaded CIFAR-10); 409 while a queued or running run uses it."""
    datasets.delete_dataset(session=session, settings=settings, name=name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
