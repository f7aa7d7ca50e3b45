package proxier

// Closer is implemented by proxiers that hold resources beyond the kernel
// state they program, such as the userspace mode's proxy sockets. The
// process that runs a proxier calls Close once the sync loop has stopped
// (on SIGTERM): the sockets live until then, not for the duration of a
// Sync's context.
type Closer interface {
	// Close releases those resources. The kernel rules stay; Cleanup
	// removes them.
	Close() error
}
