// Package kube holds the end-to-end tests of svcproxy against a real
// kube-apiserver (see e2e/apiserver): three node namespaces each run the
// svcproxy binary with --source=kube and the DaemonSet's RBAC rights, pods
// serve whoami, Services and EndpointSlices are written with client-go, and
// an external client sends traffic to every node's NodePort. The tests
// measure and log the time from an API write to working traffic on each
// node, restart the apiserver (no rule may be lost) and SIGKILL and restart
// svcproxy (established connections keep working, nothing is flushed).
package kube
