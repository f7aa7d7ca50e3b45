package isolate

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	MustIsolate()
	os.Exit(m.Run())
}

func TestIsolated(t *testing.T) {
	if !Isolated() {
		t.Fatalf("%s=%q in the test process, want 1", EnvVar, os.Getenv(EnvVar))
	}
	// The parent is the process that re-executed us, in the original
	// namespace.
	var self, parent unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &self); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()), &parent); err != nil {
		t.Fatal(err)
	}
	if self.Ino == parent.Ino {
		t.Errorf("the test runs in its parent's network namespace (inode %d)", self.Ino)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Attrs().Name != "lo" {
		var names []string
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		t.Errorf("links %v, want only lo in a fresh namespace", names)
	}
	if len(links) > 0 && links[0].Attrs().Flags&unix.IFF_UP == 0 {
		t.Errorf("lo is down, want it up")
	}
}

// helperEnv makes TestHelperProcess act instead of testing.
const helperEnv = "ISOLATE_TEST_HELPER"

// TestHelperProcess is the child of TestExitStatus: it exits as told.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		return
	case "sigterm":
		_ = unix.Kill(os.Getpid(), unix.SIGTERM)
		select {}
	case "wait-term":
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM)
		fmt.Println("ready")
		<-sigs
		os.Exit(42)
	default:
		var code int
		fmt.Sscan(os.Getenv(helperEnv), &code)
		os.Exit(code)
	}
}

// helperCommand runs the test binary as TestHelperProcess in mode, without
// the isolation marker so that it isolates itself again.
func helperCommand(mode string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, EnvVar+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, helperEnv+"="+mode)
	return cmd
}

func TestForwardsSIGTERM(t *testing.T) {
	cmd := helperCommand("wait-term")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("helper said %q (%v), want ready", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var exitErr *exec.ExitError
	if err := cmd.Wait(); !errors.As(err, &exitErr) || exitErr.ExitCode() != 42 {
		t.Errorf("Wait() = %v, want exit status 42 from the child that got SIGTERM", err)
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		helper string
		want   int
	}{
		{"0", 0},
		{"7", 7},
		{"sigterm", 128 + int(unix.SIGTERM)},
	}
	for _, tt := range tests {
		t.Run(tt.helper, func(t *testing.T) {
			err := helperCommand(tt.helper).Run()
			got := 0
			var exitErr *exec.ExitError
			if errors.As(err, &exitErr) {
				got = exitErr.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("exit status %d, want %d", got, tt.want)
			}
		})
	}
}
