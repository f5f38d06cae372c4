"""``binbaton up``: the whole service on one machine (``binbaton.service.app.supervisor``)."""

from __future__ import annotations

import argparse

from binbaton.service.app.command import Command
from binbaton.service.app.configs import check_service_settings
from binbaton.service.app.flags import Section, Values
from binbaton.service.app.sections import SERVICE
from binbaton.service.app.signals import run_until_signal
from binbaton.service.app.supervisor import SupervisorConfig, up
from binbaton.workers.engine.loader import check_model

SECTIONS = (*SERVICE, Section(SupervisorConfig))  # also `binbaton demo`'s


def run(args: argparse.Namespace, values: Values) -> int:
    # Bad settings, then a model that cannot load, stop `up` here, before the broker and
    # the workers start (one line from the dispatcher, instead of one per process).
    check_service_settings(values)
    check_model(values["model"])
    return run_until_signal(lambda stop, abort: up(values, stop, abort))


COMMAND = Command("up", SECTIONS, run)
main = COMMAND.main
