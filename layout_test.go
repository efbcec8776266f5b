package waybill_test

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/waybillkit/waybill"

// pkgInfo is what go list says of one package of the module.
type pkgInfo struct {
	ImportPath string
	Imports    []string // direct, without tests
	Deps       []string // transitive, without tests
}

// listModule runs go list over every package of the module.
func listModule(t *testing.T) map[string]pkgInfo {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", "./...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkgInfo{}
	dec := json.NewDecoder(out)
	for {
		var p pkgInfo
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs[p.ImportPath] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	return pkgs
}

// inModule returns the module's packages among paths, relative to the module
// ("" for the root).
func inModule(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p == module {
			out = append(out, "")
		} else if rel, ok := strings.CutPrefix(p, module+"/"); ok {
			out = append(out, rel)
		}
	}
	return out
}

// TestLayout holds the import rules that keep each package to one concept:
// the root carries no Kafka or Redis client, Redis implementations depend
// on nothing but the interface they implement, and Kafka wiring and replay
// never reach for the Handler.
func TestLayout(t *testing.T) {
	pkgs := listModule(t)
	get := func(rel string) pkgInfo {
		path := module
		if rel != "" {
			path += "/" + rel
		}
		p, ok := pkgs[path]
		if !ok {
			t.Fatalf("package %s not found by go list", path)
		}
		return p
	}
	drivers := []string{"github.com/IBM/sarama", "github.com/ThreeDotsLabs/watermill-kafka", "github.com/redis/go-redis"}
	noDrivers := func(rel string) {
		for _, dep := range get(rel).Deps {
			for _, d := range drivers {
				if strings.HasPrefix(dep, d) {
					t.Errorf("%q depends on %s; only kafka, replay, the Redis stores, cmd/ and examples may", rel, dep)
				}
			}
		}
	}
	for _, rel := range []string{"", "event", "deadletter", "tracestore", "ratelimit", "wechat"} {
		noDrivers(rel)
	}

	t.Run("root imports only its concepts", func(t *testing.T) {
		allowed := []string{"event", "deadletter", "tracestore", "ratelimit", "wechat"}
		for _, imp := range inModule(get("").Imports) {
			if !slices.Contains(allowed, imp) && !strings.HasPrefix(imp, "internal/") {
				t.Errorf("the root imports %s; it may import %v and internal packages", imp, allowed)
			}
		}
	})

	t.Run("Redis implementations import only their interface", func(t *testing.T) {
		impls := map[string]string{"tracestore/redis": "tracestore", "ratelimit/redis": "ratelimit", "wechat/redisstore": "wechat"}
		for impl, iface := range impls {
			for _, imp := range inModule(get(impl).Imports) {
				if imp != iface && imp != "internal/redisutil" {
					t.Errorf("%s imports %s; it may import %s and internal/redisutil", impl, imp, iface)
				}
			}
		}
		for path, p := range pkgs {
			rel := strings.TrimPrefix(strings.TrimPrefix(path, module), "/")
			if strings.HasPrefix(rel, "cmd/") || strings.HasPrefix(rel, "examples/") || strings.HasPrefix(rel, "internal/") {
				continue // programs, and the test rigs they share
			}
			for _, imp := range inModule(p.Imports) {
				if _, ok := impls[imp]; ok {
					t.Errorf("%q imports %s; only cmd/ and examples may", rel, imp)
				}
			}
		}
	})

	t.Run("kafka and replay never import the Handler", func(t *testing.T) {
		for _, rel := range []string{"kafka", "replay"} {
			if slices.Contains(get(rel).Deps, module) {
				t.Errorf("%s depends on the root package", rel)
			}
		}
	})
}
