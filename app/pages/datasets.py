"""/datasets: what the workers can train on, with counts, thumbnails and class balance; upload and delete.

The page lists the datasets as the API does (app/services/datasets.py). Uploads
and deletions go through /api/datasets from static/datasets.js, which shows the
upload's progress and then the processing progress until the dataset is ready.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.api.deps import SettingsDep
from app.pages import charts
from app.pages.templating import render
from app.services import datasets

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    listed = [datasets.public_fields(info) for info in datasets.list_datasets(settings=settings)]
    for item in listed:
        item["figure"] = charts.class_balance_figure(item["classes"], item["counts"]) if item["counts"] else None
    context = {"datasets": listed, "default": datasets.default_dataset(settings),
               "datasets_dir": settings.DATASETS_DIR, "upload_limit": settings.DATASET_UPLOAD_MAX_BYTES,
               "test_fraction": settings.DATASET_TEST_FRACTION}
    return render(request, "datasets.html", context, active="datasets")
