// Package pgutil is what the PostgreSQL stores (tracestore/postgres,
// ratelimit/postgres) share: creating their tables once, however many
// processes start at the same moment.
package pgutil

import (
	"context"
	"database/sql"
	"hash/fnv"
)

// LockKey turns name into an advisory lock key.
func LockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// CreateOnce runs ddl in one transaction under the advisory lock lock,
// unless the query exists (with args) reports that everything is there
// already: a role without CREATE rights then works on tables a DBA made.
// The lock matters because concurrent CREATE TABLE IF NOT EXISTS of one
// table can fail on pg_type's unique index.
func CreateOnce(ctx context.Context, db *sql.DB, lock int64, exists string, args []any, ddl []string) error {
	var ok bool
	if err := db.QueryRowContext(ctx, exists, args...).Scan(&ok); err != nil {
		return err
	}
	if ok {
		return nil
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, lock); err != nil {
		return err
	}
	for _, stmt := range ddl {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return tx.Commit()
}
