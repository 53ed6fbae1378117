"""The room as a state machine, in process: a manual clock, no sockets, no database.

Each transition is called directly and its effects are read back; a hypothesis state machine
then throws random joins, drops, rejoins, admits, removals and ends at one room and checks the
room's invariants after every step.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vio.clock import ManualClock
from vio.errors import Dropped, NotAllowed, Refusal, refusal
from vio.models import AttendanceKind, SessionKind, SessionStatus, WaitingRoomPolicy
from vio.rooms.admission import Person, Role, SessionFacts
from vio.rooms.effects import (
    AddMedia,
    Audit,
    Close,
    CloseMedia,
    Record,
    RemoveMedia,
    RoomClosed,
    SaveStatus,
    Send,
    SetForwarding,
    SetSpace,
)
from vio.rooms.outbox import Outbox
from vio.rooms.room import Participant, Room
from vio.settings import Settings

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
CAPACITY = 4
SETTINGS = Settings.from_env({}, secret_key="x", room_capacity=CAPACITY,
                             warning_minutes=(10, 2), reconnect_grace_seconds=60,
                             attendance_heartbeat_seconds=15)
PATIENTS = [Person(f"patient:{i}", Role.PATIENT, f"Patient {i}", patient_id=i)
            for i in range(1, 7)]
THERAPIST = Person("staff:10", Role.THERAPIST, "Jordan", staff_id=10)
FACTS = SessionFacts(
    session_id=1, program_id=1, title="Evening", kind=SessionKind.GROUP,
    status=SessionStatus.SCHEDULED, starts_at=START, ends_at=START + timedelta(hours=3),
    timezone="America/Chicago", waiting_room=WaitingRoomPolicy.THERAPIST_ADMITS,
    therapist_ids=frozenset({10}), patient_ids=frozenset(range(1, 7)),
    consented_patient_ids=frozenset(range(1, 7)), checked_in_patient_ids=frozenset(range(1, 7)))


def new_room(**facts_changes: object) -> Room:
    return Room(dataclasses.replace(FACTS, **facts_changes), SETTINGS,
                ManualClock(START + timedelta(minutes=1)))


def outbox() -> Outbox:
    return Outbox(SETTINGS.ws_send_queue)


def sent(effects: list, to: Outbox) -> list[str]:
    """The types of the messages ``effects`` send to ``to``, in order."""
    return [e.message["type"] for e in effects if isinstance(e, Send) and to in e.to]


def records(effects: list) -> list[AttendanceKind]:
    return [e.event.kind for e in effects if isinstance(e, Record)]


def join(room: Room, person: Person) -> tuple[Participant, list]:
    return room.join(person, outbox(), room.facts)


# --- single transitions ---------------------------------------------------------------------

def test_a_patient_waits_then_a_therapist_admits_her():
    room = new_room()
    dana, effects = join(room, PATIENTS[0])
    assert records(effects) == [AttendanceKind.WAITING]
    assert sent(effects, dana.outbox) == ["waiting"]
    assert dana.id in room.waiting and not dana.admitted

    jordan, effects = join(room, THERAPIST)
    assert jordan.admitted
    assert SaveStatus(SessionStatus.OPEN) in effects  # the first one in opens the session
    assert sent(effects, jordan.outbox) == ["welcome", "waiting-list"]
    assert AddMedia(jordan.id, True) in effects

    effects = room.admit(jordan, dana.id)
    kinds = [type(e) for e in effects]
    # Audit, then the record, then the welcome: nothing is acknowledged before it is written.
    assert kinds.index(Audit) < kinds.index(Record) < kinds.index(Send)
    assert sent(effects, dana.outbox) == ["welcome"]
    assert dana.admitted and dana.id in room.participants and dana.id not in room.waiting


def test_admit_takes_out_of_waiting_and_seats_in_one_step():
    """The ghost window: nothing happens between leaving the waiting room and taking a seat."""
    room = new_room()
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.admit(jordan, dana.id)
    # Her connection drops the very next moment: she leaves both lists, no ghost stays.
    effects = room.disconnected(dana, Dropped("connection-lost", "gone"))
    assert records(effects) == [AttendanceKind.DROPPED]
    assert RemoveMedia(dana.id) in effects
    assert room.everyone() == [jordan]


def test_three_connections_of_one_person_give_one_seat():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    first, _ = join(room, PATIENTS[0])
    _, effects = join(room, PATIENTS[0])
    closes = [e for e in effects if isinstance(e, Close)]
    assert [c.outbox for c in closes] == [first.outbox]
    assert closes[0].reason.code == "replaced"
    third, _ = join(room, PATIENTS[0])
    assert [p.id for p in room.everyone()] == [third.id]
    assert third.admitted  # the seat carries over


def test_a_replaced_waiting_connection_keeps_waiting():
    room = new_room()
    join(room, PATIENTS[0])
    again, _ = join(room, PATIENTS[0])
    assert list(room.waiting) == [again.id] and not room.participants


def test_capacity_counts_people_and_therapists_always_enter():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    for person in PATIENTS[:CAPACITY]:
        join(room, person)
    with pytest.raises(Refusal) as refused:
        join(room, PATIENTS[CAPACITY])
    assert refused.value.code == "room-full"
    join(room, PATIENTS[0])  # her second window takes no second place
    join(room, THERAPIST)
    assert len(room.everyone()) == CAPACITY + 1


def test_a_closed_connection_cannot_join():
    room = new_room()
    box = outbox()
    box.close(Dropped("connection-lost", "gone"))
    with pytest.raises(Dropped):
        room.join(PATIENTS[0], box, room.facts)
    assert room.everyone() == []


def test_deny_and_remove_keep_people_out():
    room = new_room()
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    effects = room.deny(jordan, dana.id)
    assert records(effects) == [AttendanceKind.DENIED]
    assert sent(effects, dana.outbox) == ["refused"]
    assert room.waiting == {}

    marcus, _ = join(room, PATIENTS[1])
    room.admit(jordan, marcus.id)
    effects = room.remove(jordan, marcus.id, "  off topic ")
    assert records(effects) == [AttendanceKind.REMOVED]
    with pytest.raises(Refusal) as refused:
        join(room, PATIENTS[1])
    assert refused.value.code == "removed"
    with pytest.raises(NotAllowed):
        room.remove(jordan, jordan.id, "no")


def test_mute_holds_the_track_until_the_participant_unmutes():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    effects = room.hold(jordan, dana.id, "audio")
    assert SetForwarding(dana.id, "audio", False) in effects
    assert sent(effects, dana.outbox)[0] == "moderated"
    # Sending "audio on" is how she unmutes; the server forwards again.
    effects = room.media(dana, audio=True, video=True)
    assert SetForwarding(dana.id, "audio", True) in effects
    assert dana.audio


def test_a_locked_microphone_stays_off_until_the_therapist_allows():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.hold(jordan, dana.id, "audio", lock=True)
    with pytest.raises(NotAllowed) as refused:
        room.media(dana, audio=True, video=True)
    assert refused.value.code == "mic-locked"
    assert "audio" in dana.held and not dana.audio  # nothing changed
    room.unlock_mic(jordan, dana.id)
    assert "audio" in dana.held  # still held until she unmutes herself
    assert SetForwarding(dana.id, "audio", True) in room.media(dana, audio=True, video=True)


def test_a_locked_microphone_outlives_a_reconnect():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.hold(jordan, dana.id, "audio", lock=True)
    room.hold(jordan, dana.id, "video")
    room.disconnected(dana, Dropped("connection-lost", "gone"))
    again, effects = join(room, PATIENTS[0])
    assert again.mic_locked and again.held == {"audio", "video"} and not again.audio
    kinds = [type(e) for e in effects]
    # Held back from the first packet: the hold comes right after the media is set up.
    assert kinds.index(AddMedia) < kinds.index(SetForwarding)
    assert {e.kind for e in effects if isinstance(e, SetForwarding)} == {"audio", "video"}
    room.media(again, audio=False, video=True)  # her camera back on, microphone still locked
    assert room.holds[PATIENTS[0].identity] == (frozenset({"audio"}), True)


def test_lock_extend_warnings_and_the_end():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    clock = room.clock
    assert isinstance(clock, ManualClock)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.set_locked(jordan, True)
    with pytest.raises(Refusal) as refused:
        join(room, PATIENTS[1])
    assert refused.value.code == "room-locked"

    clock.advance(room.ends_at - clock.now() - timedelta(minutes=10))
    assert "warning" in sent(room.tick(), dana.outbox)
    with pytest.raises(NotAllowed):
        room.extend(jordan, SETTINGS.max_extend_minutes + 1)
    effects = room.extend(jordan, 15)
    assert records(effects) == [AttendanceKind.SESSION_EXTENDED]
    assert room.ends_at == START + timedelta(hours=3, minutes=15)
    clock.advance(timedelta(minutes=15))  # 10 minutes left of the new end: the 10 is due again
    assert [e.message["minutes_left"] for e in room.tick() if isinstance(e, Send)
            and e.message["type"] == "warning"] == [10]
    clock.advance(timedelta(minutes=10))
    effects = room.tick()
    assert records(effects) == [AttendanceKind.SESSION_ENDED]
    assert CloseMedia() in effects and RoomClosed() in effects
    assert sorted(c.outbox is dana.outbox or c.outbox is jordan.outbox
                  for c in effects if isinstance(c, Close)) == [True, True]
    assert room.ended and room.everyone() == []
    assert room.tick() == [] and room.end("again") == []


def test_a_locked_out_patient_is_noted_for_the_therapist_and_the_record():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    room.set_locked(jordan, True)
    with pytest.raises(Refusal) as refused:
        join(room, PATIENTS[0])
    effects = room.refused(PATIENTS[0], refused.value)
    assert records(effects) == [AttendanceKind.REFUSED]
    assert next(e for e in effects if isinstance(e, Record)).event.detail == {
        "code": "room-locked"}
    notice = next(e for e in effects if isinstance(e, Send))
    assert notice.to == (jordan.outbox,) and notice.message["type"] == "join-refused"
    assert notice.message["name"] == PATIENTS[0].name
    # Refusals that say nothing about the room (not on the roster) are not noted.
    assert room.refused(PATIENTS[1], Refusal("not-on-roster", "x")) == []


def test_heartbeats_name_who_is_present():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    dana, _ = join(room, PATIENTS[0])
    first = [e for e in room.tick() if isinstance(e, Record)]
    assert first[0].event.detail == {"present": [dana.id]}
    assert [e for e in room.tick() if isinstance(e, Record)] == []  # not again within 15 s
    room.clock.advance(timedelta(seconds=15))  # type: ignore[attr-defined]
    assert len([e for e in room.tick() if isinstance(e, Record)]) == 1


def test_a_dropped_patient_rejoins_within_the_grace_past_the_lock():
    room = new_room()
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.admit(jordan, dana.id)
    room.set_locked(jordan, True)
    room.disconnected(dana, Dropped("connection-lost", "gone"))
    again, _ = join(room, PATIENTS[0])
    assert again.admitted
    room.disconnected(again, Dropped("connection-lost", "gone"))
    room.clock.advance(timedelta(seconds=61))  # type: ignore[attr-defined]
    with pytest.raises(Refusal):
        join(room, PATIENTS[0])


def test_side_room_moves_two_and_the_group_is_told():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    marcus, _ = join(room, PATIENTS[1])
    effects = room.side_room(jordan, dana.id)
    assert {e.participant_id for e in effects if isinstance(e, SetSpace)} == {jordan.id, dana.id}
    assert "side-room-state" in sent(effects, marcus.outbox)
    chat = room.chat(marcus, "hello", "room")
    assert sent(chat, dana.outbox) == [] and sent(chat, marcus.outbox) == ["chat"]
    # The therapist drops: the side room comes back to the main room by itself.
    effects = room.disconnected(jordan, Dropped("connection-lost", "gone"))
    assert SetSpace(dana.id, None) in effects and dana.space is None


def test_a_failed_record_takes_the_person_out():
    room = new_room(waiting_room=WaitingRoomPolicy.OPEN)
    dana, _ = join(room, PATIENTS[0])
    effects = room.failed(dana.id, Dropped("server-error", "could not record"))
    assert room.everyone() == []
    assert [c.reason.code for c in effects if isinstance(c, Close)] == ["server-error"]


def test_removing_a_family_member_on_consent_revocation():
    family = Person("family-invite:3", Role.FAMILY, "Angela", family_invite_id=3,
                    family_member_id=9)
    room = new_room()
    angela = Participant("p-1", family, "Angela", outbox(), START)
    room.waiting[angela.id] = angela  # as if admitted to wait by the invite rules
    effects = room.remove_matching(lambda p: p.family_member_id == 9, refusal("consent-revoked"))
    assert sent(effects, angela.outbox) == ["refused"]
    assert room.everyone() == [] and "family-invite:3" in room.removed


def test_a_room_continues_from_its_saved_state():
    room = new_room()
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    marcus, _ = join(room, PATIENTS[1])
    room.admit(jordan, dana.id)
    room.admit(jordan, marcus.id)
    room.remove(jordan, marcus.id, "reason")
    room.hold(jordan, dana.id, "audio", lock=True)
    room.side_room(jordan, dana.id)
    room.extend(jordan, 10)
    room.set_locked(jordan, True)
    state, saved_at = room.durable(), room.clock.now()

    # The process dies; another opens the room from what was saved, a little later.
    again = Room(room.facts, SETTINGS, ManualClock(saved_at + timedelta(seconds=20)))
    again.restore(state, saved_at)
    assert again.durable() == {**state, "seated": [], "dropped": {
        THERAPIST.identity: saved_at.isoformat(), PATIENTS[0].identity: saved_at.isoformat()}}
    dana2, _ = join(again, PATIENTS[0])
    assert dana2.admitted and dana2.mic_locked  # straight in past the lock, still held
    jordan2, effects = join(again, THERAPIST)
    assert jordan2.space == dana2.space == f"side-{THERAPIST.identity}"  # the side room holds
    assert sent(effects, dana2.outbox) == ["participant-joined", "side-room", "side-room-state"]
    for person, code in ((PATIENTS[1], "removed"), (PATIENTS[2], "room-locked")):
        with pytest.raises(Refusal) as refused:
            join(again, person)
        assert refused.value.code == code
    assert again.ends_at == room.ends_at


def test_after_the_grace_a_saved_seat_waits_again():
    room = new_room()
    jordan, _ = join(room, THERAPIST)
    dana, _ = join(room, PATIENTS[0])
    room.admit(jordan, dana.id)
    state, saved_at = room.durable(), room.clock.now()
    again = Room(room.facts, SETTINGS, ManualClock(saved_at + timedelta(seconds=61)))
    again.restore(state, saved_at)
    assert not join(again, PATIENTS[0])[0].admitted


# --- random storms ----------------------------------------------------------------------------

class RoomStorm(RuleBasedStateMachine):
    """Random joins, drops, rejoins, admits, removals, locks and ends against one room."""

    def __init__(self) -> None:
        super().__init__()
        self.room = new_room()
        self.clock = self.room.clock
        self.connections: list[Participant] = []
        self.recorded: list[Record] = []

    def _apply(self, effects: list) -> None:
        """Carry out what matters here: records are kept, closes close."""
        for effect in effects:
            if isinstance(effect, Record):
                self.recorded.append(effect)
            elif isinstance(effect, Close):
                effect.outbox.close(effect.reason)
            elif isinstance(effect, Send):
                for box in effect.to:
                    box.put(effect.message)

    def _seated_therapist(self) -> Participant | None:
        return next((p for p in self.room.participants.values() if p.is_therapist), None)

    @rule(who=st.sampled_from([*PATIENTS, THERAPIST]))
    def join(self, who: Person) -> None:
        box = outbox()
        try:
            participant, effects = self.room.join(who, box, self.room.facts)
        except Refusal:
            return
        # The connection tells the room when it closes, as LiveRoom wires it.
        box.on_close(lambda reason, p=participant: self._apply(self.room.disconnected(p,
                                                                                      reason)))
        self.connections.append(participant)
        self._apply(effects)

    @rule(index=st.integers(0, 50), by_choice=st.booleans())
    def a_connection_ends(self, index: int, by_choice: bool) -> None:
        if not self.connections:
            return
        p = self.connections[index % len(self.connections)]
        p.outbox.close(Dropped("left", "bye") if by_choice else Dropped("connection-lost", "x"))

    @rule(index=st.integers(0, 50))
    def admit(self, index: int) -> None:
        therapist = self._seated_therapist()
        if therapist is None or not self.room.waiting:
            return
        waiting = list(self.room.waiting)[index % len(self.room.waiting)]
        self._apply(self.room.admit(therapist, waiting))

    @rule()
    def admit_all(self) -> None:
        therapist = self._seated_therapist()
        if therapist is not None:
            self._apply(self.room.admit_all(therapist))

    @rule(index=st.integers(0, 50))
    def remove(self, index: int) -> None:
        therapist = self._seated_therapist()
        patients = [p for p in self.room.participants.values() if not p.is_therapist]
        if therapist is None or not patients:
            return
        self._apply(self.room.remove(therapist, patients[index % len(patients)].id, "reason"))

    @rule(locked=st.booleans())
    def lock(self, locked: bool) -> None:
        therapist = self._seated_therapist()
        if therapist is not None:
            self._apply(self.room.set_locked(therapist, locked))

    @rule(seconds=st.integers(1, 120))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(timedelta(seconds=seconds))  # type: ignore[attr-defined]
        self._apply(self.room.tick())

    @precondition(lambda self: not self.room.ended)
    @rule()
    def end(self) -> None:
        self._apply(self.room.end("over"))

    @invariant()
    def one_seat_per_person(self) -> None:
        identities = [p.person.identity for p in self.room.everyone()]
        assert len(identities) == len(set(identities))

    @invariant()
    def occupancy_within_capacity(self) -> None:
        people = {p.person.identity for p in self.room.everyone() if not p.is_therapist}
        assert len(people) <= CAPACITY

    @invariant()
    def everyone_here_has_a_live_connection(self) -> None:
        assert all(p.outbox.alive for p in self.room.everyone())

    @invariant()
    def seated_and_waiting_are_apart(self) -> None:
        assert not set(self.room.participants) & set(self.room.waiting)
        assert all(p.admitted for p in self.room.participants.values())

    @invariant()
    def every_interval_is_closed_when_the_room_ends(self) -> None:
        if not self.room.ended:
            return
        assert self.room.everyone() == []
        opened = {r.event.connection for r in self.recorded
                  if r.event.kind in (AttendanceKind.ADMITTED, AttendanceKind.WAITING)}
        closed = {r.event.connection for r in self.recorded if r.event.kind in (
            AttendanceKind.LEFT, AttendanceKind.DROPPED, AttendanceKind.REMOVED,
            AttendanceKind.DENIED)}
        ended = [r for r in self.recorded if r.event.kind is AttendanceKind.SESSION_ENDED]
        present_at_end = set(ended[0].event.detail["present"]) if ended else set()
        waiting_at_end = {p.id for p in self.connections if not p.admitted} - closed
        assert opened <= closed | present_at_end | waiting_at_end


RoomStorm.TestCase.settings = hypothesis_settings(max_examples=150, stateful_step_count=40,
                                                  deadline=None)
test_room_storm = RoomStorm.TestCase
