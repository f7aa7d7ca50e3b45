package proxier_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/svcproxy/svcproxy/proxier"
)

// recordingSink sends one line per call ("update-service ns/a", ...).
type recordingSink struct {
	events chan string
	// slices keeps the last slice delivered per name, to check contents.
	last chan *discovery.EndpointSlice
}

var _ proxier.Sink = (*recordingSink)(nil)

func (s *recordingSink) UpdateService(svc *v1.Service) {
	s.events <- "update-service " + svc.Namespace + "/" + svc.Name
}
func (s *recordingSink) DeleteService(k types.NamespacedName) {
	s.events <- "delete-service " + k.String()
}
func (s *recordingSink) UpdateEndpointSlice(sl *discovery.EndpointSlice) {
	s.last <- sl
	s.events <- "update-slice " + sl.Namespace + "/" + sl.Name
}
func (s *recordingSink) DeleteEndpointSlice(k types.NamespacedName) {
	s.events <- "delete-slice " + k.String()
}

// expectEvents reads exactly len(want) events (in any order) and compares.
func (s *recordingSink) expectEvents(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	for range want {
		select {
		case e := <-s.events:
			got = append(got, e)
		case <-time.After(waitLimit):
			t.Fatalf("got events %v, still waiting for the rest of %v", got, want)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
}

const svcDoc = `apiVersion: v1
kind: Service
metadata:
  name: %s
  namespace: %s
spec:
  clusterIP: %s
  ports:
  - name: http
    port: 80
    protocol: TCP
`

const sliceDoc = `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: a-1
  namespace: ns
  labels:
    kubernetes.io/service-name: a
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [%q]
`

// writeAtomic replaces a file by rename, as editors and kubectl-like tools
// do, so the watcher never reads a half-written file.
func writeAtomic(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, ".tmp-"+name)
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

func TestFileSource(t *testing.T) {
	dir := t.TempDir()
	writeAtomic(t, dir, "a.yaml", fmt.Sprintf(svcDoc, "a", "ns", "172.30.0.1")+"---\n# only a comment\n---\n"+fmt.Sprintf(sliceDoc, "10.0.1.1"))
	bad := fmt.Sprintf(svcDoc, "b", "ns", "172.30.0.2") +
		"---\napiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {ports: 12}\n" + // wrong type
		"---\napiVersion: v1\nkind: Service\nmetadata: {name: typo}\nspec: {clusterIPP: 1.2.3.4}\n" + // unknown field (strict)
		"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n" + // unknown kind
		"---\n" + fmt.Sprintf(svcDoc, "c", "", "172.30.0.3") // no namespace: default
	writeAtomic(t, dir, "b.yml", bad)
	writeAtomic(t, dir, "notes.txt", "not a manifest")

	sink := &recordingSink{events: make(chan string, 100), last: make(chan *discovery.EndpointSlice, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &proxier.FileSource{Path: dir, Debounce: 10 * time.Millisecond}
	if err := src.Start(ctx, sink); err != nil {
		t.Fatal(err)
	}
	// The bad documents are skipped; the rest of their file applies.
	sink.expectEvents(t, "update-service ns/a", "update-service ns/b", "update-service default/c", "update-slice ns/a-1")
	<-sink.last

	// Editing the slice delivers only the slice.
	writeAtomic(t, dir, "a.yaml", fmt.Sprintf(svcDoc, "a", "ns", "172.30.0.1")+"---\n"+fmt.Sprintf(sliceDoc, "10.0.1.2"))
	sink.expectEvents(t, "update-slice ns/a-1")
	if got := (<-sink.last).Endpoints[0].Addresses[0]; got != "10.0.1.2" {
		t.Fatalf("edited slice has address %s, want 10.0.1.2", got)
	}

	// Removing a file deletes what it held (the next events prove that the
	// edit above delivered nothing else).
	if err := os.Remove(filepath.Join(dir, "b.yml")); err != nil {
		t.Fatal(err)
	}
	sink.expectEvents(t, "delete-service ns/b", "delete-service default/c")

	// A service removed from a file is deleted; the slice goes with its file.
	writeAtomic(t, dir, "a.yaml", fmt.Sprintf(sliceDoc, "10.0.1.2"))
	sink.expectEvents(t, "delete-service ns/a")
	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	sink.expectEvents(t, "delete-slice ns/a-1")
}

func TestFileSourceSingleFileAndMissingPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "one.yaml")
	writeAtomic(t, dir, "one.yaml", fmt.Sprintf(svcDoc, "a", "ns", "172.30.0.1"))
	writeAtomic(t, dir, "other.yaml", fmt.Sprintf(svcDoc, "z", "ns", "172.30.0.26"))
	sink := &recordingSink{events: make(chan string, 100), last: make(chan *discovery.EndpointSlice, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := (&proxier.FileSource{Path: file, Debounce: 10 * time.Millisecond}).Start(ctx, sink); err != nil {
		t.Fatal(err)
	}
	sink.expectEvents(t, "update-service ns/a") // other.yaml is not read
	writeAtomic(t, dir, "one.yaml", fmt.Sprintf(svcDoc, "a", "ns", "172.30.0.9"))
	sink.expectEvents(t, "update-service ns/a")

	if err := (&proxier.FileSource{Path: filepath.Join(dir, "nope")}).Start(ctx, sink); err == nil {
		t.Fatal("Start on a missing path succeeded")
	}
}

// TestFileSourceConfigMapVolume: a ConfigMap volume updates its files by
// swapping the "..data" symlink (the files are symlinks through it), so the
// only events are on hidden names; the source must still re-read.
func TestFileSourceConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	version := func(name, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name, "svc.yaml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(name, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	version("..2026_01_01_v1", fmt.Sprintf(svcDoc, "a", "ns", "172.30.0.1"))
	if err := os.Symlink(filepath.Join("..data", "svc.yaml"), filepath.Join(dir, "svc.yaml")); err != nil {
		t.Fatal(err)
	}
	// Both a directory source and a single-file source see the swap.
	for i, path := range []string{dir, filepath.Join(dir, "svc.yaml")} {
		sink := &recordingSink{events: make(chan string, 100), last: make(chan *discovery.EndpointSlice, 100)}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := (&proxier.FileSource{Path: path, Debounce: 10 * time.Millisecond}).Start(ctx, sink); err != nil {
			t.Fatal(err)
		}
		sink.expectEvents(t, "update-service ns/a")
		version(fmt.Sprintf("..2026_01_02_v%d", i+2), fmt.Sprintf(svcDoc, "a", "ns", fmt.Sprintf("172.30.0.%d", i+2)))
		sink.expectEvents(t, "update-service ns/a")
		cancel()
	}
}
