-- Run once by scripts/stack.sh after mariadb-install-db, over the unix socket as the
-- installing OS user (unix_socket auth). Idempotent.
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;

CREATE DATABASE IF NOT EXISTS legacy_chat CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;

-- Admin: owns the legacy_chat database (and legacy_chat_* scratch databases for tests);
-- loads fixtures with LOAD DATA LOCAL INFILE (needs no FILE privilege).
CREATE USER IF NOT EXISTS 'falcon_admin'@'127.0.0.1' IDENTIFIED BY 'falcon_admin';
CREATE USER IF NOT EXISTS 'falcon_admin'@'localhost' IDENTIFIED BY 'falcon_admin';
GRANT ALL PRIVILEGES ON `legacy\_chat%`.* TO 'falcon_admin'@'127.0.0.1';
GRANT ALL PRIVILEGES ON `legacy\_chat%`.* TO 'falcon_admin'@'localhost';
GRANT BINLOG MONITOR, RELOAD ON *.* TO 'falcon_admin'@'127.0.0.1';
GRANT BINLOG MONITOR, RELOAD ON *.* TO 'falcon_admin'@'localhost';

-- Tool user: read-only on the data, plus what a binlog reader needs.
-- MariaDB 10.11: REPLICATION CLIENT is an alias of BINLOG MONITOR (SHOW MASTER STATUS,
-- SHOW BINARY LOGS); REPLICATION SLAVE allows COM_BINLOG_DUMP.
CREATE USER IF NOT EXISTS 'falcon'@'127.0.0.1' IDENTIFIED BY 'falcon';
CREATE USER IF NOT EXISTS 'falcon'@'localhost' IDENTIFIED BY 'falcon';
GRANT SELECT ON `legacy\_chat%`.* TO 'falcon'@'127.0.0.1';
GRANT SELECT ON `legacy\_chat%`.* TO 'falcon'@'localhost';
GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'falcon'@'127.0.0.1';
GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR ON *.* TO 'falcon'@'localhost';
FLUSH PRIVILEGES;
