package main

import (
	"io"
	"strings"
	"testing"
)

// TestStartRefusesCompactionDuty: `flotilla start` refuses a
// --compaction-duty outside 0.05..1 with an error naming the flag. 0 is
// refused by start itself (the flag's default is the duty, not 0), the
// rest by start or by server.Config's validation.
func TestStartRefusesCompactionDuty(t *testing.T) {
	for _, v := range []string{"0", "0.04", "1.5", "-1", "NaN"} {
		cmd := newStartCmd()
		cmd.SetOut(io.Discard)
		cmd.SetErr(io.Discard)
		cmd.SetArgs([]string{"--id", "1", "--initial-cluster", "1=127.0.0.1:1", "--data-dir", t.TempDir(), "--insecure", "--compaction-duty", v})
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), "--compaction-duty") {
			t.Fatalf("--compaction-duty %s: err %v, want a refusal naming the flag", v, err)
		}
	}
}
