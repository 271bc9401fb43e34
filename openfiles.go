package main

// How many streams the open-file limit can hold: every stream holds a connection, and a
// process out of files leaves new clients waiting in the kernel's queue instead of
// getting the overload answer.

import (
	"fmt"
	"log/slog"
)

// fitMaxClients lowers -max-clients, with a warning, to what the open-file limit can hold
// beside -fd-margin other files. Lowering rather than refusing to start keeps the default
// working wherever the limit is low, and clients over the limit get the overload answer.
func fitMaxClients(cfg *config, logger *slog.Logger) error {
	limit, err := openFileLimit()
	if err != nil {
		return err
	}
	fitted, err := fitOpenFiles(cfg.stream.MaxClients, limit, cfg.fdMargin)
	if err != nil {
		return err
	}
	if fitted < cfg.stream.MaxClients {
		logger.Warn("lowering -max-clients to fit the open-file limit", "max_clients", fitted,
			"asked", cfg.stream.MaxClients, "open_file_limit", limit, "fd_margin", cfg.fdMargin)
		cfg.stream.MaxClients = fitted
	}
	return nil
}

// fitOpenFiles returns how many streams fit in an open-file limit of limit while keeping
// margin files for everything else, at most maxClients. Every stream holds a connection,
// and running out of files would leave new clients waiting in the kernel's queue instead
// of getting the overload answer.
func fitOpenFiles(maxClients int, limit uint64, margin int) (int, error) {
	if limit <= uint64(margin) {
		return 0, fmt.Errorf("the open-file limit %d leaves no room for streams with -fd-margin %d: raise it (ulimit -n) or lower -fd-margin", limit, margin)
	}
	if room := limit - uint64(margin); room < uint64(maxClients) {
		return int(room), nil
	}
	return maxClients, nil
}
