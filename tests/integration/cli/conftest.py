"""The operator's command line against running services: the users' stack (CA, OTP and enrollment over mTLS on a
fake clock, `kagi admin` pointed at it), shared with the users' tests rather than built a second time."""

from tests.integration.users.conftest import clock, stack, state_dir, workdir

__all__ = ["clock", "stack", "state_dir", "workdir"]
