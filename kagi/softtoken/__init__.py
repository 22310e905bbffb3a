"""The terminal soft-token app: activation against the gateway, an encrypted local seed file, codes."""
