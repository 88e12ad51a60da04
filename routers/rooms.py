"""/rooms: the rooms and, for admins, adding their slots."""

import uuid

from fastapi import APIRouter

import catalog
from auth import AdminDep
from db import DatabaseDep
from errors import problem_schema
from schemas import RoomCreate, RoomRead, SlotCreate, SlotRead

router = APIRouter(prefix="/rooms", tags=["rooms"])


@router.post(
    "", status_code=201, response_model=RoomRead, dependencies=[AdminDep], responses=problem_schema(401, 403, 409, 422)
)
async def create_room(data: RoomCreate, db: DatabaseDep) -> RoomRead:
    """Admin: add a room; names are unique case-insensitively."""
    return await db.run(lambda session: RoomRead.model_validate(catalog.create_room(session, data)))


@router.get("", response_model=list[RoomRead])
async def list_rooms(db: DatabaseDep) -> list[RoomRead]:
    """Every room, ordered by name."""
    return await db.run(lambda session: [RoomRead.model_validate(room) for room in catalog.list_rooms(session)])


@router.get("/{room_id}", response_model=RoomRead, responses=problem_schema(404, 422))
async def get_room(room_id: uuid.UUID, db: DatabaseDep) -> RoomRead:
    """One room."""
    return await db.run(lambda session: RoomRead.model_validate(catalog.get_room(session, room_id)))


@router.post(
    "/{room_id}/slots",
    status_code=201,
    response_model=SlotRead,
    dependencies=[AdminDep],
    responses=problem_schema(401, 403, 404, 409, 422),
)
async def create_slot(room_id: uuid.UUID, data: SlotCreate, db: DatabaseDep) -> SlotRead:
    """Admin: add a future, non-overlapping slot to a room."""
    return await db.run(lambda session: catalog.create_slot(session, room_id, data))
