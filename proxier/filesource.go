package proxier

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/klog/v2"
)

// FileSource reads v1 Services and discovery/v1 EndpointSlices from a YAML
// file or a directory of them (multi-document, .yaml/.yml/.json), and
// watches them: every change re-reads the files and feeds the differences
// to the sink. A bad document is logged with its file and position and
// skipped; the rest apply.
type FileSource struct {
	// Path is a file or a directory.
	Path string
	// Debounce groups a burst of file events into one re-read.
	Debounce time.Duration

	services map[types.NamespacedName]*v1.Service
	slices   map[types.NamespacedName]*discovery.EndpointSlice
	// parsed caches each file's objects by the hash of its content, so a
	// change re-parses only the files that changed.
	parsed map[string]parsedFile
}

// parsedFile is one file's objects and the hash of the content they came
// from.
type parsedFile struct {
	sum      [sha256.Size]byte
	services []*v1.Service
	slices   []*discovery.EndpointSlice
}

// fileDecoder decodes the two kinds the file source accepts, strictly.
var fileDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	_ = v1.AddToScheme(scheme)
	_ = discovery.AddToScheme(scheme)
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// Start reads the files once, delivers them to sink and then watches for
// changes until ctx ends. It returns after the first delivery.
func (f *FileSource) Start(ctx context.Context, sink Sink) error {
	if _, err := os.Stat(f.Path); err != nil {
		return fmt.Errorf("file source: %w", err)
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("file source: watch %s: %w", f.Path, err)
	}
	// Watch the directory (or the file's directory): editors replace files
	// by rename, which a watch on the file itself would lose.
	dir := f.Path
	if st, _ := os.Stat(f.Path); !st.IsDir() {
		dir = filepath.Dir(f.Path)
	}
	if err := watcher.Add(dir); err != nil {
		watcher.Close()
		return fmt.Errorf("file source: watch %s: %w", dir, err)
	}
	f.services = map[types.NamespacedName]*v1.Service{}
	f.slices = map[types.NamespacedName]*discovery.EndpointSlice{}
	f.reload(sink)
	debounce := f.Debounce
	if debounce <= 0 {
		debounce = 100 * time.Millisecond
	}
	go func() {
		defer watcher.Close()
		var fire <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-watcher.Events:
				if !ok {
					return
				}
				if f.relevant(ev.Name) {
					fire = time.After(debounce)
				}
			case err, ok := <-watcher.Errors:
				if !ok {
					return
				}
				klog.ErrorS(err, "File source watch error", "path", f.Path)
			case <-fire:
				fire = nil
				f.reload(sink)
			}
		}
	}()
	return nil
}

// relevant reports whether an event on name may change what we read.
func (f *FileSource) relevant(name string) bool {
	// A ConfigMap volume swaps its "..data" symlink; the files are
	// symlinks through it and see no event of their own.
	if filepath.Clean(name) == filepath.Clean(f.Path) || filepath.Base(name) == "..data" {
		return true
	}
	if st, err := os.Stat(f.Path); err == nil && st.IsDir() {
		return isManifest(name)
	}
	return false
}

func isManifest(name string) bool {
	base := filepath.Base(name)
	if strings.HasPrefix(base, ".") {
		return false
	}
	switch filepath.Ext(name) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// reload re-reads every file and sends the differences to sink.
func (f *FileSource) reload(sink Sink) {
	services, slices, err := f.read()
	if err != nil {
		klog.ErrorS(err, "File source: cannot read; keeping the previous state", "path", f.Path)
		return
	}
	for key, svc := range services {
		if old, ok := f.services[key]; !ok || (old != svc && !equality.Semantic.DeepEqual(old, svc)) {
			sink.UpdateService(svc)
		}
	}
	for key := range f.services {
		if _, ok := services[key]; !ok {
			sink.DeleteService(key)
		}
	}
	for key, s := range slices {
		if old, ok := f.slices[key]; !ok || (old != s && !equality.Semantic.DeepEqual(old, s)) {
			sink.UpdateEndpointSlice(s)
		}
	}
	for key := range f.slices {
		if _, ok := slices[key]; !ok {
			sink.DeleteEndpointSlice(key)
		}
	}
	f.services, f.slices = services, slices
	klog.V(2).InfoS("File source loaded", "path", f.Path, "services", len(services), "endpointSlices", len(slices))
}

// read returns every Service and EndpointSlice under f.Path, parsing only
// the files that changed since the last read. Objects without a namespace
// get "default".
func (f *FileSource) read() (map[types.NamespacedName]*v1.Service, map[types.NamespacedName]*discovery.EndpointSlice, error) {
	files, err := manifestFiles(f.Path)
	if err != nil {
		return nil, nil, err
	}
	parsed := make(map[string]parsedFile, len(files))
	services := map[types.NamespacedName]*v1.Service{}
	slices := map[types.NamespacedName]*discovery.EndpointSlice{}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", file, err)
		}
		pf, ok := f.parsed[file]
		if sum := sha256.Sum256(data); !ok || pf.sum != sum {
			pf = parseManifests(file, data)
			pf.sum = sum
		}
		parsed[file] = pf
		for _, o := range pf.services {
			services[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = o
		}
		for _, o := range pf.slices {
			slices[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = o
		}
	}
	f.parsed = parsed
	return services, slices, nil
}

// parseManifests parses the Services and EndpointSlices of one file's
// content. A bad document is logged with its file and position and skipped.
func parseManifests(file string, data []byte) parsedFile {
	var pf parsedFile
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			klog.ErrorS(err, "Skipping the rest of an unreadable file", "file", file, "document", doc)
			break
		}
		if len(bytes.TrimSpace(raw)) == 0 || isOnlyComments(raw) {
			continue
		}
		obj, _, err := fileDecoder.Decode(raw, nil, nil)
		if err != nil {
			klog.ErrorS(err, "Skipping invalid document", "file", file, "document", doc)
			continue
		}
		switch o := obj.(type) {
		case *v1.Service:
			if o.Namespace == "" {
				o.Namespace = "default"
			}
			pf.services = append(pf.services, o)
		case *discovery.EndpointSlice:
			if o.Namespace == "" {
				o.Namespace = "default"
			}
			pf.slices = append(pf.slices, o)
		default:
			klog.InfoS("Ignoring a document that is neither a Service nor an EndpointSlice", "file", file, "document", doc, "kind", obj.GetObjectKind().GroupVersionKind().Kind)
		}
	}
	return pf
}

func isOnlyComments(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			return false
		}
	}
	return true
}

func manifestFiles(path string) ([]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{path}, nil
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", path, err)
	}
	var files []string
	for _, e := range entries {
		if !e.IsDir() && isManifest(e.Name()) {
			files = append(files, filepath.Join(path, e.Name()))
		}
	}
	sort.Strings(files)
	return files, nil
}
