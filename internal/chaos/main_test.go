package chaos

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testutil.LeakOptions(goleak.Cleanup(func(code int) {
		removeBinary()
		os.Exit(code)
	}))...)
}
