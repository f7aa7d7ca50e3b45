// Command svcproxy is a node-level Kubernetes service proxy with three modes
// (userspace, iptables, IPVS) behind one --mode flag, plus the teaching lab,
// the benchmark and the explain tool. This package only wires; the logic
// lives in proxier/, the mode packages and e2e/.
package main

import (
	"os"

	"k8s.io/klog/v2"
)

func main() {
	defer klog.Flush()
	if err := newRootCommand().Execute(); err != nil {
		klog.Flush()
		os.Exit(1)
	}
}
