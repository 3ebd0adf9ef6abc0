//go:build !race

package sim

// raceEnabled: the tests run under the race detector (TestSeeds).
const raceEnabled = false
