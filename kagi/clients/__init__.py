"""What kagi's components share as clients of one another: the revocation follower of the CA's stream."""
