package suite

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"time"

	"github.com/svcproxy/svcproxy/e2e/isolate"
	"github.com/svcproxy/svcproxy/e2e/vm"
)

// TestMain moves the test binary into a throwaway network namespace first,
// so nothing it does can reach the host's own.
func TestMain(m *testing.M) {
	isolate.MustIsolate()
	os.Exit(m.Run())
}

func TestIPTablesMode(t *testing.T) {
	Run(t, Options{Mode: "iptables"})
}

func TestUserspaceMode(t *testing.T) {
	Run(t, Options{Mode: "userspace"})
}

// TestIPVSMode runs the table in IPVS mode: directly where the kernel has
// IPVS (or inside the VM), else by re-running this test inside the IPVS VM.
func TestIPVSMode(t *testing.T) {
	if vm.HostHasIPVS() || vm.InVM() {
		// Strict ARP: the topology routes the service range on-link over the
		// fabric, so without it a node answers ARP for the addresses on its
		// kube-ipvs0, and a node that has not programmed a service yet sends
		// the service's packets to a neighbour's IPVS (see ipvs/README.md).
		Run(t, Options{Mode: "ipvs", Binary: os.Getenv(binaryEnv), ExtraArgs: []string{"--ipvs-strict-arp"}})
		return
	}
	runInVM(t, "^TestIPVSMode$")
}

// binaryEnv passes the svcproxy binary built on the host into the VM, where
// building it would take minutes.
const binaryEnv = "SVCPROXY_SUITE_BINARY"

// runInVM re-runs this test binary inside the IPVS VM with the tests that
// match pattern and fails with the VM's output if they fail.
func runInVM(t *testing.T, pattern string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	bin := BuildBinary(t)
	var out bytes.Buffer
	if err := vm.EnsureImage(ctx, &out); err != nil {
		t.Fatalf("the IPVS VM image: %v\n%s", err, out.String())
	}
	out.Reset()
	var w io.Writer = &out
	if testing.Verbose() {
		w = io.MultiWriter(&out, os.Stdout)
	}
	err := vm.Run(ctx, vm.Options{Stdout: w, Stderr: w, Env: []string{binaryEnv + "=" + bin}},
		os.Args[0], "-test.run", pattern, "-test.v", "-test.count=1")
	if err != nil {
		if !testing.Verbose() {
			t.Logf("VM output:\n%s", out.String())
		}
		t.Fatalf("%s in the IPVS VM: %v", pattern, err)
	}
}
