package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Test conventions: TestVM boots the real VM twice (about 3.5 s each under
// TCG) and never touches the host's network namespace; every network change
// below happens in the VM's root netns, which lives in the guest's RAM.
// Run under the runner itself (SVCPROXY_IN_VM=1), the same cases run the
// command directly: the VM is already the throwaway kernel they need.

// vmChecks exercises what the IPVS tests need from the guest kernel and the
// host tools. It starts in a root netns that must hold only lo, and cleans
// up after itself so it can run twice in the same VM.
const vmChecks = `set -eu
echo "links=$(ip -o link show | wc -l)"
cat /proc/net/ip_vs
ipvsadm -A -t 10.0.0.1:80 -s rr
ipvsadm -Ln
ip link add vmcheck0 type dummy
ip -o link show vmcheck0
ipset create vmcheck hash:ip
ipset list vmcheck
iptables -V
iptables -t nat -L -n
ipset destroy vmcheck
ip link del vmcheck0
ipvsadm -D -t 10.0.0.1:80
echo checks-done
`

// vmJob checks what the runner passes in and out: environment, working
// directory, PATH, a writable share, and the exit status.
const vmJob = `echo "$SVCPROXY_VMTEST in_vm=$SVCPROXY_IN_VM" >"$OUT_DIR/result"
echo "pwd=$(pwd)"
echo "go=$(command -v go)"
exit 3
`

func TestVM(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	run := bootRun
	if InVM() {
		t.Logf("%s=1: running the cases directly in this VM", EnvInVM)
		run = directRun
	} else {
		var log bytes.Buffer
		if err := EnsureImage(ctx, &log); err != nil {
			t.Fatalf("cannot build the VM image (this test needs root, apt and %s): %v\n%s", ImageDir(), err, log.String())
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()

	tests := []struct {
		name     string
		opts     Options
		script   string
		wantCode int
		wantOut  []string
		wantFile string // content of outDir/result, when set
	}{
		{
			name:     "ipvs ipset iptables dummy",
			script:   vmChecks,
			wantCode: 0,
			wantOut: []string{
				"links=1\n",
				"IP Virtual Server version",
				"TCP  10.0.0.1:80 rr",
				"vmcheck0:",
				"Name: vmcheck\n",
				"(nf_tables)",
				"Chain POSTROUTING",
				"checks-done\n",
			},
		},
		{
			name: "exit status env dir and share",
			opts: Options{
				Env:      []string{"SVCPROXY_VMTEST=hello", "OUT_DIR=" + outDir},
				Writable: []string{outDir},
				Dir:      wd,
			},
			script:   vmJob,
			wantCode: 3,
			wantOut:  []string{"pwd=" + wd + "\n", "go=/usr/local/go/bin/go\n"},
			wantFile: "hello in_vm=1\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, diag bytes.Buffer
			tc.opts.Stdout, tc.opts.Stderr = &out, &diag
			err := run(ctx, tc.opts, "sh", "-c", tc.script)
			if got := ExitCode(err); got != tc.wantCode {
				t.Fatalf("exit status %d (%v), want %d\noutput:\n%s\nrunner:\n%s", got, err, tc.wantCode, out.String(), diag.String())
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q\noutput:\n%s", w, out.String())
				}
			}
			if tc.wantFile != "" {
				b, err := os.ReadFile(filepath.Join(outDir, "result"))
				if err != nil || string(b) != tc.wantFile {
					t.Errorf("result file = %q, %v; want %q", b, err, tc.wantFile)
				}
			}
			if d := strings.TrimSpace(diag.String()); d != "" {
				t.Logf("runner: %s", d)
			}
		})
	}
}

// bootRun runs the command in a fresh VM.
func bootRun(ctx context.Context, opts Options, args ...string) error {
	return Run(ctx, opts, args...)
}

// directRun runs the command here, as the runner would run it inside.
func directRun(ctx context.Context, opts Options, args ...string) error {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.Stdout, cmd.Stderr = opts.Stdout, opts.Stdout
	return cmd.Run()
}
