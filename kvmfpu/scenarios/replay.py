"""What a scenario replay observed: one event per step, with its outcome as the system
reported it (an errno from an ioctl, a fault and its vector, a host oops, or success) and
the values read afterwards. A replay's ``bug`` is decided from these observations."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core.faults import Fault
from kvmfpu.kvm.errors import HostOops, KvmError

T = TypeVar("T")


class NotApplicable(ValueError):
    """The scenario cannot run on the chosen host or version (e.g. no XSAVES)."""


def settable_xcr0(guest_supported: int) -> int:
    """The largest XCR0 KVM_SET_XCRS accepts for a guest CPUID: all of it, except a lone
    XTILECFG (5.17-6.3 offer it without permission for XTILEDATA, and __kvm_set_xcr wants
    the pair)."""
    if guest_supported & xf.XTILE == xf.XTILECFG:
        return guest_supported & ~xf.XTILECFG
    return guest_supported


@dataclass
class Event:
    """One step. ``outcome`` is "ok", an errno name ("EINVAL"), a guest-visible fault
    ("#GP") or "host-oops"; ``vector`` is set for faults and oopses."""

    step: str
    outcome: str = "ok"
    detail: str = ""
    errno: str | None = None
    function: str | None = None
    vector: int | None = None
    values: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def line(self) -> str:
        vals = " ".join(f"{k}={v:#x}" for k, v in self.values.items())
        text = f"{self.step}: {self.outcome}"
        if self.detail:
            text += f" ({self.detail})"
        return text + (f"; {vals}" if vals else "")

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "outcome": self.outcome, "detail": self.detail,
                "errno": self.errno, "function": self.function, "vector": self.vector,
                "values": {k: f"{v:#x}" for k, v in self.values.items()}}


@dataclass
class Replay:
    scenario: str
    seed: str
    version: str                      # the kernel (or hypervisor) release replayed
    host: str
    flavor: str
    bug: bool = False
    verdict: str = ""
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def event(self, prefix: str) -> Event:
        """The first event whose step starts with ``prefix``."""
        for e in self.events:
            if e.step.startswith(prefix):
                return e
        raise KeyError(f"no step starting with {prefix!r} in {self.scenario}")

    def has(self, prefix: str) -> bool:
        return any(e.step.startswith(prefix) for e in self.events)

    def lines(self) -> list[str]:
        head = (f"{self.scenario} (seed {self.seed}) on {self.host}/{self.flavor}, "
                f"{self.version}: {'BUG' if self.bug else 'no bug'} - {self.verdict}")
        return [head, *(f"  {e.line()}" for e in self.events), *(f"  note: {n}" for n in self.notes)]

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "version": self.version,
                "host": self.host, "flavor": self.flavor, "bug": self.bug,
                "verdict": self.verdict, "events": [e.to_json() for e in self.events],
                "notes": list(self.notes)}


class Recorder:
    """Runs steps and turns what they raise into events (the replay goes on after a
    failed step only where the caller says so)."""

    def __init__(self, replay: Replay):
        self.replay = replay

    def step(self, what: str, action: Callable[[], T] | None = None,
             ) -> tuple[Event, T | None]:
        ev = Event(what)
        result: T | None = None
        with self.capture(ev):
            if action is not None:
                result = action()
        self.replay.events.append(ev)
        return ev, result

    @contextmanager
    def capture(self, ev: Event) -> Iterator[Event]:
        try:
            yield ev
        except KvmError as exc:
            ev.outcome = exc.errno_name
            ev.errno = exc.errno_name
            ev.function = exc.function
            ev.detail = exc.reason
        except HostOops as exc:
            ev.outcome = "host-oops"
            ev.vector = exc.fault.vector
            ev.function = exc.chain[-1] if exc.chain else None
            ev.detail = str(exc)
        except Fault as exc:
            ev.outcome = exc.label
            ev.vector = exc.vector
            ev.detail = str(exc)
