package butterfly_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/butterfly-mesh/butterfly/internal/etcdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}
