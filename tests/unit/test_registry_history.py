"""The champion history: events as registered-model tags, replayed into the champion stack (no MLflow)."""

import json
import random

import pytest

from kdflow.registry.history import (EVENT_PREFIX, Event, event_key, next_seq, parse_events, repair_note, replay,
                                     rollback_plan, unrecorded_rollback, who)


def ev(seq, action, version, previous=None, note=""):
    return Event(seq, action, str(version), None if previous is None else str(previous), "2025-01-01T00:00:00Z",
                 "tester", "", note)


def tags_of(*events):
    return {e.key: e.to_json() for e in events}


def promotions(*versions, action="promote"):
    """Consecutive promotions of ``versions``, each replacing the one before."""
    return [ev(i + 1, action, v, versions[i - 1] if i else None) for i, v in enumerate(versions)]


def everything_exists(_version):
    return True


def test_event_tag_round_trips_and_keys_sort_as_text():
    event = Event(12, "force", "7", "3", "2025-01-31T12:00:00Z", "alice", "hotfix for INC-42", "")
    assert event.key == "kdflow.champion.event.000012"
    assert parse_events({event.key: event.to_json()}) == [event]
    assert json.loads(event.to_json())["previous"] == "3"
    # Zero padding: event 10 sorts after event 9 as text too (the MLflow UI lists tags as text).
    assert sorted([event_key(10), event_key(9)]) == [event_key(9), event_key(10)]


def test_parse_keeps_only_valid_events_in_sequence_order():
    events = promotions("1", "2", "3")
    tags = {**tags_of(*reversed(events)), "kdflow.other": "x", EVENT_PREFIX + "000099": "not json",
            EVENT_PREFIX + "000098": json.dumps({"seq": 98, "action": "teleport", "version": "9"}),
            EVENT_PREFIX + "000097": json.dumps({"action": "promote"})}
    assert parse_events(tags) == events
    assert next_seq(events) == 4 and next_seq([]) == 1


def test_promotions_push_and_auto_and_force_count_alike():
    events = [ev(1, "auto", 1), ev(2, "promote", 2, 1), ev(3, "force", 5, 2)]
    assert replay(events) == ["1", "2", "5"]
    assert replay([]) == []


def test_rollback_returns_to_the_version_below_the_top():
    stack = replay(promotions(1, 2, 3))
    plan = rollback_plan(stack, "3", everything_exists)
    assert (plan.target, plan.skipped, plan.external) == ("2", (), False)
    assert replay(promotions(1, 2, 3) + [ev(4, "rollback", 2, 3)]) == ["1", "2"]


def test_rollback_of_a_rollback_goes_one_further_back():
    events = promotions(1, 2, 3) + [ev(4, "rollback", 2, 3)]
    assert rollback_plan(replay(events), "2", everything_exists).target == "1"
    events.append(ev(5, "rollback", 1, 2))
    assert replay(events) == ["1"]
    assert rollback_plan(replay(events), "1", everything_exists).target is None  # nothing before the first


def test_promoting_again_undoes_a_rollback():
    events = promotions(1, 2, 3) + [ev(4, "rollback", 2, 3), ev(5, "promote", 3, 2)]
    assert replay(events) == ["1", "2", "3"]
    assert rollback_plan(replay(events), "3", everything_exists).target == "2"


def test_alias_moved_outside_kdflow_to_a_version_not_in_the_history_is_taken_as_the_top():
    stack = replay(promotions(1, 3))  # then someone set champion to version 2 in the MLflow UI
    plan = rollback_plan(stack, "2", everything_exists)
    assert (plan.target, plan.external, plan.unrecorded) == ("3", True, False)
    assert not unrecorded_rollback(stack, "2")
    assert plan.note("2", "3").startswith("external: the alias was on version 2")
    # The event it writes replays to the same stack: the holder is pushed, then popped.
    assert replay(promotions(1, 3) + [ev(3, "rollback", 3, 2, note="external")]) == ["1", "3"]


def test_promotion_over_an_outside_move_keeps_the_outside_champion_in_the_history():
    events = promotions(1, 3) + [ev(3, "promote", 4, 2)]  # version 2 was champion (set outside kdflow)
    assert replay(events) == ["1", "3", "2", "4"]
    assert rollback_plan(replay(events), "4", everything_exists).target == "2"


def test_alias_on_a_version_below_the_top_is_a_rollback_that_already_happened():
    # [1, 2, 3] with champion on 2 and no event for that move (a rollback that died after moving the
    # alias, or a move back by hand): the next rollback goes to 1, never back to 3.
    stack = replay(promotions(1, 2, 3))
    assert unrecorded_rollback(stack, "2") and not unrecorded_rollback(stack, "3")
    assert not unrecorded_rollback(stack, "7") and not unrecorded_rollback([], "2")
    plan = rollback_plan(stack, "2", everything_exists)
    assert (plan.target, plan.skipped, plan.external, plan.unrecorded) == ("1", (), False, True)
    assert plan.note("2", "3").startswith("unrecorded: the alias was on version 2, below")
    assert rollback_plan(stack, "1", everything_exists).target is None  # moved back to the bottom


def test_unrecorded_rollback_cuts_back_to_the_holders_last_occurrence():
    events = promotions(1, 2, 3) + [ev(4, "promote", 2, 3), ev(5, "promote", 4, 2)]
    assert replay(events) == ["1", "2", "3", "2", "4"]
    # Alias moved from 4 back to 2 without a record: that undid the last promotion only.
    assert rollback_plan(replay(events), "2", everything_exists).target == "3"
    assert replay(events + [ev(6, "rollback", 2, 4, note=repair_note("2"))]) == ["1", "2", "3", "2"]


def test_repair_event_and_later_events_replay_like_the_plan():
    base = promotions(1, 2, 3)
    repair = ev(4, "rollback", 2, 3, note=repair_note("2"))
    assert repair.note == ("repair: an unrecorded move of the alias to version 2 was found "
                           "(interrupted rollback or a move outside kdflow)")
    assert replay(base + [repair]) == ["1", "2"]
    # Interrupted rollback 3 -> 2, then rollback again: with or without the repair event, it goes to 1.
    for history in (base, base + [repair]):
        target = rollback_plan(replay(history), "2", everything_exists).target
        assert target == "1"
        assert replay(history + [ev(next_seq(history), "rollback", target, 2)]) == ["1"]
    # A promotion over the unrecorded rollback: its previous (2) is found lower down, popped to, not pushed.
    promoted = base + [ev(4, "promote", 4, 2)]
    assert replay(promoted) == replay(base + [repair, ev(5, "promote", 4, 2)]) == ["1", "2", "4"]
    assert rollback_plan(replay(promoted), "4", everything_exists).target == "2"
    assert rollback_plan(["1", "2"], "2", everything_exists).target == "1"


def test_same_version_twice_in_a_row_is_not_a_rollback_target():
    # 3 is champion, moved to 2 outside kdflow, then kdflow promotes 3 again: [1, 3, 2, 3].
    events = promotions(1, 3) + [ev(3, "promote", 3, 2)]
    assert rollback_plan(replay(events), "3", everything_exists).target == "2"
    # Holder 3 with a stack [1, 3, 3] (an event lost between alias and history): goes to 1, not to 3.
    assert rollback_plan(["1", "3", "3"], "3", everything_exists).target == "1"


def test_deleted_versions_are_skipped_and_named():
    stack = replay(promotions(1, 2, 3, 4))
    plan = rollback_plan(stack, "4", lambda v: v not in {"2", "3"})
    assert (plan.target, plan.skipped) == ("1", ("3", "2"))
    assert plan.note("4", "4") == "skipped deleted versions 3, 2"
    # Replaying the rollback event pops the skipped versions too.
    assert replay(promotions(1, 2, 3, 4) + [ev(5, "rollback", 1, 4)]) == ["1"]


def test_no_previous_champion_when_every_earlier_version_is_deleted():
    plan = rollback_plan(replay(promotions(1, 2)), "2", lambda v: v != "1")
    assert (plan.target, plan.skipped) == (None, ("1",))


def test_plan_and_replay_agree_over_a_long_history():
    """After every event a plan produced, the replayed stack's top is the version the alias moved to."""
    exists = lambda v: v != "4"  # noqa: E731
    events, holder = [], None
    for step in ["1", "2", "back", "3", "4", "5", "back", "back", "2", "back"]:
        stack = replay(events)
        if step == "back":
            target = rollback_plan(stack, holder, exists).target
            events.append(ev(next_seq(events), "rollback", target, holder))
            holder = target
        else:
            events.append(ev(next_seq(events), "promote", step, holder))
            holder = step
        assert replay(events)[-1] == holder
    assert replay(events) == ["1"]
    assert rollback_plan(replay(events), "1", exists).target is None


@pytest.mark.parametrize("seed", range(20))
def test_plan_and_replay_agree_with_unrecorded_moves(seed):
    """Random promotions, rollbacks and unrecorded alias moves (to a version in the history or not):
    after every recorded event the replayed top is the alias holder, a repair event changes no
    outcome, and a rollback never returns to the version an unrecorded rollback moved away from."""
    rng, exists = random.Random(seed), (lambda v: v != "5")  # noqa: E731
    events, holder = [], None
    for _ in range(30):
        stack, op = replay(events), rng.choice(["promote", "promote", "back", "back", "move"])
        if op == "move" and holder is not None:  # the alias moves with no event written
            rolled_from, holder = holder, rng.choice([*stack, "6", "7"])
            if holder == rolled_from:
                continue
            if unrecorded_rollback(stack, holder):
                with_repair = events + [ev(next_seq(events), "rollback", holder, rolled_from, note=repair_note(holder))]
                plan = rollback_plan(stack, holder, exists)
                assert rollback_plan(replay(with_repair), holder, exists).target == plan.target
                if plan.target is not None and stack.count(rolled_from) == 1:
                    assert plan.target != rolled_from
                if rng.random() < 0.5:
                    events = with_repair
            continue
        if op == "back" and holder is not None:
            target = rollback_plan(stack, holder, exists).target
            if target is None:
                continue
            events.append(ev(next_seq(events), "rollback", target, holder))
            holder = target
        elif op == "promote":
            version = rng.choice("123467")
            if version == holder:
                continue
            events.append(ev(next_seq(events), "promote", version, holder))
            holder = version
        else:
            continue
        assert replay(events)[-1] == holder


def test_who_prefers_kdflow_user(monkeypatch):
    monkeypatch.setenv("KDFLOW_USER", "release-bot")
    assert who() == "release-bot"
    monkeypatch.setenv("KDFLOW_USER", "  ")
    assert who() and who() != "  "


@pytest.mark.parametrize("action", ["promote", "auto", "force"])
def test_first_event_has_no_previous(action):
    assert replay([ev(1, action, 9)]) == ["9"]
