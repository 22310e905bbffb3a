"""A development mail sink for the compose deployment: accepts SMTP on port 1025 and files each message in the
Maildir /var/lib/kagi/mail (new/), where `kagi`'s step-7 mail can be read. Standard library only; for a real
deployment point KAGI_SMTP_URL at the bank's mail relay instead.
"""

import asyncore
import mailbox
import os
import smtpd
import sys
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)

MAILDIR = os.environ.get("KAGI_MAILSINK_DIR", "/var/lib/kagi/mail")
ADDRESS = ("0.0.0.0", int(os.environ.get("KAGI_MAILSINK_PORT", "1025")))  # noqa: S104 - the container's own port


class MaildirSink(smtpd.SMTPServer):
    """Files every message it receives in the Maildir, as received."""

    def __init__(self) -> None:
        super().__init__(ADDRESS, None, decode_data=False)
        self.box = mailbox.Maildir(MAILDIR, create=True)

    def process_message(self, peer: object, mailfrom: str, rcpttos: list[str], data: bytes, **kwargs: object) -> None:
        """Store one message; the envelope recipients go in a header for readers."""
        self.box.add(b"X-Envelope-To: " + ", ".join(rcpttos).encode() + b"\r\n" + data)
        print(f"mail from {mailfrom} to {', '.join(rcpttos)} filed", flush=True)


if __name__ == "__main__":
    MaildirSink()
    print(f"mail sink on port {ADDRESS[1]}, filing into {MAILDIR}", file=sys.stderr, flush=True)
    asyncore.loop()
