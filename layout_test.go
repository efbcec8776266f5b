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
// the root carries no Kafka, Redis or PostgreSQL client, Redis and
// PostgreSQL implementations depend on nothing but the interface they
// implement, the Kafka and PostgreSQL wiring and replay never reach for the
// Handler, and neither carries the other's driver: a monolith on PostgreSQL
// links no Kafka client, a Kafka service no PostgreSQL driver.
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
	kafkaDrivers := []string{"github.com/IBM/sarama", "github.com/ThreeDotsLabs/watermill-kafka"}
	redisDrivers := []string{"github.com/redis/go-redis"}
	sqlDrivers := []string{"github.com/ThreeDotsLabs/watermill-sql", "github.com/jackc/pgx", "github.com/lib/pq"}
	noDrivers := func(rel string, drivers ...[]string) {
		for _, dep := range get(rel).Deps {
			for _, ds := range drivers {
				for _, d := range ds {
					if strings.HasPrefix(dep, d) {
						t.Errorf("%q depends on %s; only the driver packages, cmd/ and examples may", rel, dep)
					}
				}
			}
		}
	}
	for _, rel := range []string{"", "event", "deadletter", "tracestore", "ratelimit", "wechat"} {
		noDrivers(rel, kafkaDrivers, redisDrivers, sqlDrivers)
	}
	for _, rel := range []string{"kafka", "replay", "tracestore/redis", "ratelimit/redis", "wechat/redisstore"} {
		noDrivers(rel, sqlDrivers)
	}
	for _, rel := range []string{"postgres", "tracestore/postgres", "ratelimit/postgres", "examples/monolith"} {
		noDrivers(rel, kafkaDrivers, redisDrivers)
	}

	t.Run("root imports only its concepts", func(t *testing.T) {
		allowed := []string{"event", "deadletter", "tracestore", "ratelimit", "wechat"}
		for _, imp := range inModule(get("").Imports) {
			if !slices.Contains(allowed, imp) && !strings.HasPrefix(imp, "internal/") {
				t.Errorf("the root imports %s; it may import %v and internal packages", imp, allowed)
			}
		}
	})

	t.Run("store implementations import only their interface", func(t *testing.T) {
		impls := map[string]string{"tracestore/redis": "tracestore", "ratelimit/redis": "ratelimit", "wechat/redisstore": "wechat",
			"tracestore/postgres": "tracestore", "ratelimit/postgres": "ratelimit"}
		for impl, iface := range impls {
			for _, imp := range inModule(get(impl).Imports) {
				if imp != iface && imp != "internal/redisutil" && imp != "internal/pgutil" {
					t.Errorf("%s imports %s; it may import %s and internal/redisutil or internal/pgutil", impl, imp, iface)
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

	t.Run("kafka, postgres and replay never import the Handler", func(t *testing.T) {
		for _, rel := range []string{"kafka", "postgres", "replay"} {
			if slices.Contains(get(rel).Deps, module) {
				t.Errorf("%s depends on the root package", rel)
			}
		}
	})
}
