//go:build !race

package vtcodec

const raceEnabled = false
