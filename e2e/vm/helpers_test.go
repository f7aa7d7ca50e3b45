package vm

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestHasIPVS(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "ip_vs")
	if err := os.WriteFile(present, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	absent := filepath.Join(dir, "missing")
	tests := []struct {
		name    string
		proc    string
		canLoad bool
		want    bool
	}{
		{name: "loaded", proc: present, canLoad: false, want: true},
		{name: "loadable module", proc: absent, canLoad: true, want: true},
		{name: "neither", proc: absent, canLoad: false, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hasIPVS(tc.proc, func() bool { return tc.canLoad }); got != tc.want {
				t.Errorf("hasIPVS(%q, %v) = %v, want %v", tc.proc, tc.canLoad, got, tc.want)
			}
		})
	}
}

func TestInVM(t *testing.T) {
	tests := []struct {
		value string
		want  bool
	}{
		{value: "1", want: true},
		{value: "", want: false},
		{value: "0", want: false},
		{value: "true", want: false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.value), func(t *testing.T) {
			t.Setenv(EnvInVM, tc.value)
			if got := InVM(); got != tc.want {
				t.Errorf("InVM() with %s=%q = %v, want %v", EnvInVM, tc.value, got, tc.want)
			}
		})
	}
}

func TestModuleRoot(t *testing.T) {
	// root/go.mod (svcproxy) > root/tools/go.mod (another module) > deeper dirs
	root := t.TempDir()
	write := func(rel, text string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "// comment\nmodule github.com/svcproxy/svcproxy\n\ngo 1.26\n")
	write("tools/go.mod", "module github.com/svcproxy/svcproxy/tools\n")
	write("e2e/vm/x/keep", "")
	write("tools/deep/keep", "")
	other := t.TempDir()
	if err := os.WriteFile(filepath.Join(other, "go.mod"), []byte("module \"example.com/other\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		start   string
		want    string
		wantErr bool
	}{
		{name: "at the root", start: root, want: root},
		{name: "nested package", start: filepath.Join(root, "e2e/vm/x"), want: root},
		{name: "inside a nested module", start: filepath.Join(root, "tools/deep"), want: root},
		{name: "another module only", start: other, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := moduleRoot(tc.start)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("moduleRoot(%q) = %q, want an error", tc.start, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("moduleRoot(%q) = %q, %v; want %q", tc.start, got, err, tc.want)
			}
		})
	}
}

func TestRunnerPath(t *testing.T) {
	// From this package's dir the walk must reach the repository's script.
	p, err := RunnerPath()
	if err != nil {
		t.Fatalf("RunnerPath() from the package dir: %v", err)
	}
	if !filepath.IsAbs(p) || filepath.Base(p) != "run-in-vm.sh" {
		t.Errorf("RunnerPath() = %q, want an absolute path to run-in-vm.sh", p)
	}
	t.Setenv(EnvRunner, "relative/runner.sh")
	p, err = RunnerPath()
	if err != nil || !filepath.IsAbs(p) || filepath.Base(p) != "runner.sh" {
		t.Errorf("RunnerPath() with %s set = %q, %v; want it made absolute", EnvRunner, p, err)
	}
}

func TestRunnerArgs(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		args []string
		want []string
	}{
		{
			name: "defaults",
			args: []string{"ipvsadm", "-Ln"},
			want: []string{"--", "ipvsadm", "-Ln"},
		},
		{
			name: "everything",
			opts: Options{
				Timeout:   1500 * time.Millisecond,
				MemoryMiB: 1024,
				Writable:  []string{"/a", "/b"},
				Env:       []string{"K=V", "X=a b"},
			},
			args: []string{"./x.test", "-test.v"},
			want: []string{"-t", "2", "-m", "1024", "-w", "/a", "-w", "/b", "-e", "K=V", "-e", "X=a b", "--", "./x.test", "-test.v"},
		},
		{
			name: "whole seconds stay",
			opts: Options{Timeout: time.Minute},
			args: []string{"-dash-first"},
			want: []string{"-t", "60", "--", "-dash-first"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := runnerArgs(tc.opts, tc.args); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("runnerArgs() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	exit3 := exec.Command("sh", "-c", "exit 3").Run()
	tests := []struct {
		name string
		err  error
		want int
	}{
		{name: "nil", err: nil, want: 0},
		{name: "wrapped exit status", err: fmt.Errorf("running x in the VM: %w", exit3), want: 3},
		{name: "not an exit", err: errors.New("boom"), want: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ExitCode(tc.err); got != tc.want {
				t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestRunRefusesToNest(t *testing.T) {
	t.Setenv(EnvInVM, "1")
	err := Run(t.Context(), Options{Runner: "/nonexistent"}, "true")
	if err == nil {
		t.Fatal("Run inside the VM succeeded, want an error")
	}
}
