package waybill_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/waybillkit/waybill/internal/textlist"
)

// TestReadmeSnippetsAreExamples: every Go snippet in README.md is, line for
// line, the body of an example test in the root, so that each one
// compiles and follows the API as it changes.
func TestReadmeSnippetsAreExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("example*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	var code []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code = append(code, textlist.Split(string(b), "\n")...)
	}
	joined := "\n" + strings.Join(code, "\n") + "\n"
	snippets := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(snippets) == 0 {
		t.Fatal("README.md has no Go snippet: this test checks nothing")
	}
	for _, m := range snippets {
		snippet := strings.Join(textlist.Split(m[1], "\n"), "\n")
		if !strings.Contains(joined, "\n"+snippet+"\n") {
			t.Errorf("README snippet is not the body of an example in %v:\n%s", files, m[1])
		}
	}
}
