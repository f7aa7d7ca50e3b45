// Package e2e holds the userspace mode's own end-to-end tests: real
// network namespaces (package e2e/topology), real iptables, the svcproxy
// binary in --mode=userspace on a node, whoami pods, and traffic that checks
// what only this mode has to prove: a dead pod costs a retry and not a
// failed request, a 100 MB transfer through the proxy socket arrives
// intact, UDP replies reach clients on pods and on the node itself, and
// explain and cleanup work from another process. The mode-independent
// table (e2e/suite) runs in userspace mode too. The package has only
// tests; this file documents it.
package e2e
