//go:build race

package vtcodec

// raceEnabled: under the race detector, sync.Pool drops a quarter of what
// it is given.
const raceEnabled = true
