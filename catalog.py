"""Rooms and their time slots: what can be booked."""

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import changelog
from booking import slot_read
from clock import utc_now
from db import read_transaction, write_transaction
from errors import Code, Conflict, InvalidInput, NotFound
from models import Room, TimeSlot
from schemas import EventKind, RoomCreate, SlotCreate, SlotRead, SlotStatus


def create_room(session: Session, data: RoomCreate) -> Room:
    """Add a room; 409 when another room has the same name, whatever its case."""
    room = Room(name=data.name, capacity=data.capacity)
    try:
        with write_transaction(session):
            session.add(room)
    except IntegrityError as exc:
        raise Conflict(Code.ROOM_NAME_TAKEN, "A room with this name already exists.") from exc
    return room


def list_rooms(session: Session) -> list[Room]:
    """Every room, by name."""
    with read_transaction(session):
        return list(session.scalars(select(Room).order_by(Room.name, Room.id)))


def get_room(session: Session, room_id: uuid.UUID) -> Room:
    """One room; 404 when unknown."""
    with read_transaction(session):
        room = session.get(Room, room_id)
    if room is None:
        raise NotFound(Code.ROOM_NOT_FOUND, "No room has this id.")
    return room


def create_slot(session: Session, room_id: uuid.UUID, data: SlotCreate) -> SlotRead:
    """Add a future slot to a room; 409 when it overlaps another slot of that room."""
    if data.start_time <= utc_now():
        raise InvalidInput(Code.SLOT_IN_PAST, "start_time must be in the future.")
    with write_transaction(session):
        # Locking the room row serialises slot creation per room on PostgreSQL (SQLite's
        # writer lock already does), so two overlapping slots cannot both pass the check.
        if session.scalar(select(Room.id).where(Room.id == room_id).with_for_update()) is None:
            raise NotFound(Code.ROOM_NOT_FOUND, "No room has this id.")
        overlap = session.scalar(
            select(TimeSlot.id).where(
                TimeSlot.room_id == room_id, TimeSlot.start_time < data.end_time, TimeSlot.end_time > data.start_time
            )
        )
        if overlap is not None:
            raise Conflict(
                Code.SLOT_OVERLAP, "The slot overlaps another slot of this room.", overlapping_slot_id=overlap
            )
        slot = TimeSlot(room_id=room_id, start_time=data.start_time, end_time=data.end_time)
        session.add(slot)
        session.flush()
        changelog.record(session, EventKind.SLOT_CREATED, slot.id)
    return slot_read(slot, SlotStatus.AVAILABLE)
