"""The CA service: issues, revokes and publishes the status of kagi's certificates (domain core in `domain`)."""
