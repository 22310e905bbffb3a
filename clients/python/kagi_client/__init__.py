"""kagi's client side for bank front-ends: mTLS channels to the services and the errors they answer.

The generated stubs install beside this package as `kagi.ca.v1`, `kagi.otp.v1`, `kagi.enrollment.v1` and
`kagi.common.v1`.
"""

from kagi_client.channel import MAX_RESPONSE_BYTES, channel_credentials, open_aio_channel, open_channel
from kagi_client.errors import KagiErrorDetails, error_info

__all__ = [
    "MAX_RESPONSE_BYTES",
    "KagiErrorDetails",
    "channel_credentials",
    "error_info",
    "open_aio_channel",
    "open_channel",
]
