package suite

import (
	"os"
	"testing"

	"github.com/svcproxy/svcproxy/e2e/isolate"
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
