from fastapi import APIRouter

from app.api.deps import ReaderDep
from app.api.routes import compare, datasets, health, models, runs, study, sweeps, visualize, workers

api_router = APIRouter()
api_router.include_router(health.router)  # open: a load balancer's probe has no token
# With TRAINBOARD_API_TOKEN set, reads need it too: runs, checkpoints, streams, visualisations, datasets.
for _router in (models.router, runs.router, sweeps.router, study.router, compare.router, visualize.router,
                workers.router, datasets.router):
    api_router.include_router(_router, dependencies=[ReaderDep])
