//go:build !unix

package embedetcd

// checkDataDir finds nothing where file locks are not flock's.
func checkDataDir(string) error { return nil }
