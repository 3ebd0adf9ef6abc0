package keys

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestKindsDisjoint: every kind has one owner and one byte of its own.
func TestKindsDisjoint(t *testing.T) {
	seen := map[Kind]string{}
	for _, r := range All {
		if prev, ok := seen[r.Kind]; ok {
			t.Errorf("kind %q registered twice: %s and %s/%s", r.Kind, prev, r.Owner, r.Name)
		}
		seen[r.Kind] = r.Owner + "/" + r.Name
		if r.Owner != "storage" && r.Owner != "kv" {
			t.Errorf("kind %q: unknown owner %q", r.Kind, r.Owner)
		}
	}
}

// TestNoKindOutsideRegistry: the packages that write the database take
// their kinds from here; a kind byte literal of their own would escape the
// disjointness check.
func TestNoKindOutsideRegistry(t *testing.T) {
	lit := regexp.MustCompile(`kind[A-Za-z]*\s*=\s*'.'`)
	for _, dir := range []string{"../../storage", "../../kv"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if m := lit.Find(b); m != nil {
				t.Errorf("%s declares its own key kind (%s); register it in internal/keys", f, m)
			}
		}
	}
}
