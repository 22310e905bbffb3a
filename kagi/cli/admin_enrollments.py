"""`kagi admin` commands for enrollments in progress: reopen-enrollment (gRPC as the operator).

People get a table; scripts pass --json and get one JSON document.
"""

from __future__ import annotations

import os
from typing import Any

import click

from kagi.cli.admin import AdminContext, run_call
from kagi.cli.output import json_option, print_json, print_rows
from kagi.enrollment.v1 import enrollment_pb2, enrollment_pb2_grpc

_COLUMNS = ("enrollment_id", "state", "next_step", "user_id", "expires_at")


def enrollment_json(enrollment: enrollment_pb2.Enrollment) -> dict[str, Any]:
    """Return what an operator sees of an enrollment (never a secret)."""
    step = enrollment_pb2.Step.Name(enrollment.next_step).removeprefix("STEP_")
    return {
        "enrollment_id": enrollment.enrollment_id,
        "application_id": enrollment.application_id,
        "state": enrollment_pb2.Enrollment.State.Name(enrollment.state).removeprefix("STATE_"),
        "next_step": "" if step == "UNSPECIFIED" else step,
        "user_id": enrollment.user_id,
        "certificate_serial_number": enrollment.certificate_serial_number,
        "token_id": enrollment.token_id,
        "expires_at": enrollment.expire_time.ToJsonString(),
        "updated_at": enrollment.update_time.ToJsonString(),
    }


@click.command("reopen-enrollment")
@click.option("--enrollment", "enrollment_id", required=True, help="The id of the EXPIRED enrollment.")
@json_option()
@click.pass_obj
def reopen_enrollment_command(obj: AdminContext, enrollment_id: str, as_json: bool) -> None:
    """Re-open an EXPIRED enrollment with a fresh idle timeout: where it stood while its credentials were
    untouched, else at the step that issues a new certificate (its user and login ID reserved again)."""

    async def call() -> enrollment_pb2.Enrollment:
        async with obj.channel("enrollment") as channel:
            stub = enrollment_pb2_grpc.EnrollmentServiceStub(channel)
            reply = await stub.ReopenEnrollment(
                enrollment_pb2.ReopenEnrollmentRequest(request_id=os.urandom(16).hex(), enrollment_id=enrollment_id),
                timeout=30,
            )
            enrollment: enrollment_pb2.Enrollment = reply.enrollment
            return enrollment

    shown = enrollment_json(run_call(call))
    if as_json:
        print_json(shown)
        return
    print_rows([shown], _COLUMNS, as_json=False)


ENROLLMENT_COMMANDS = (reopen_enrollment_command,)
