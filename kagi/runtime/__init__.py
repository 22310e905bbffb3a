"""Runtime pieces shared by every kagi component: settings, logging, gRPC server and client plumbing."""
