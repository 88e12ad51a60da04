"""/metrics: the Prometheus scrape endpoint, for operators; no personal data."""

from fastapi import APIRouter, Response

import metrics
from state import DatabaseDep

router = APIRouter(tags=["health"])


# Left out of the OpenAPI document: it is for Prometheus, not API clients, and speaks its text format.
@router.get("/metrics", include_in_schema=False)
async def scrape(db: DatabaseDep) -> Response:
    """Every metric in the Prometheus text format (with --workers: all workers, via PROMETHEUS_MULTIPROC_DIR)."""
    metrics.observe_pool(db.pool_state())
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
