from fastapi import APIRouter

from app.api.routes import compare, datasets, health, models, runs, sweeps, visualize

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(runs.router)
api_router.include_router(sweeps.router)
api_router.include_router(compare.router)
api_router.include_router(visualize.router)
api_router.include_router(datasets.router)
