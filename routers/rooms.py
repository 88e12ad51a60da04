"""/rooms: the rooms and, for admins, adding their slots."""

import uuid

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

import catalog
from auth import AdminDep
from errors import Code
from idempotency import ADMIN, IdempotencyDep, respond
from openapi import IDEMPOTENT_CODES, WRITE_CODES, problems
from routers import json_response
from schemas import RoomCreate, RoomRead, SlotCreate, SlotRead
from state import DatabaseDep, SettingsDep

router = APIRouter(prefix="/rooms", tags=["rooms"])


@router.post(
    "",
    status_code=201,
    response_model=RoomRead,
    operation_id="createRoom",
    responses=problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.ADMIN_REQUIRED,
        Code.ROOM_NAME_TAKEN,
        Code.VALIDATION_ERROR,
        Code.MALFORMED_JSON,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    ),
)
async def create_room(
    _: AdminDep, data: RoomCreate, db: DatabaseDep, settings: SettingsDep, idem: IdempotencyDep
) -> Response:
    """Admin: add a room; names are unique case-insensitively."""

    def work(session: Session) -> RoomRead:
        return RoomRead.model_validate(catalog.create_room(session, data))

    return await respond(db, settings, idem, ADMIN, work, 201)


@router.get("", response_model=list[RoomRead], operation_id="listRooms", responses=problems())
async def list_rooms(db: DatabaseDep) -> Response:
    """Every room, ordered by name."""
    rooms = await db.run(lambda session: [RoomRead.model_validate(room) for room in catalog.list_rooms(session)])
    return json_response(rooms)


@router.get(
    "/{room_id}",
    response_model=RoomRead,
    operation_id="getRoom",
    responses=problems(Code.ROOM_NOT_FOUND, Code.VALIDATION_ERROR),
)
async def get_room(room_id: uuid.UUID, db: DatabaseDep) -> Response:
    """One room."""
    return json_response(await db.run(lambda session: RoomRead.model_validate(catalog.get_room(session, room_id))))


@router.post(
    "/{room_id}/slots",
    status_code=201,
    response_model=SlotRead,
    operation_id="createSlot",
    responses=problems(
        Code.MISSING_TOKEN,
        Code.INVALID_TOKEN,
        Code.ADMIN_REQUIRED,
        Code.ROOM_NOT_FOUND,
        Code.SLOT_OVERLAP,
        Code.VALIDATION_ERROR,
        Code.MALFORMED_JSON,
        Code.SLOT_IN_PAST,
        *IDEMPOTENT_CODES,
        *WRITE_CODES,
    ),
)
async def create_slot(
    _: AdminDep, room_id: uuid.UUID, data: SlotCreate, db: DatabaseDep, settings: SettingsDep, idem: IdempotencyDep
) -> Response:
    """Admin: add a future, non-overlapping slot to a room."""

    def work(session: Session) -> SlotRead:
        return catalog.create_slot(session, room_id, data)

    return await respond(db, settings, idem, ADMIN, work, 201)
