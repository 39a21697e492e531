#
# Licensed to the Apache Software Foundation (ASF) under the Apache License, Version 2.0.
#
# scripts/stack.sh runs the hbase-shell 2.4.17 Ruby sources (the newest hbase-shell jar the
# registry serves) on top of the HBase 2.6 client jars. 2.4's `trace` command imports
# org.apache.hadoop.hbase.trace.SpanReceiverHost (HTrace), which HBase 2.5+ removed in
# favour of OpenTelemetry; that import broke the whole shell at startup. This directory is
# put on the classpath BEFORE the jars, so this stub replaces shell/commands/trace.rb.

module Shell
  module Commands
    class Trace < Command
      def help
        <<-EOF
HTrace tracing is not available in this shell (HBase 2.5+ uses OpenTelemetry).
EOF
      end

      def command(*_args)
        puts 'trace: not supported by this shell'
        false
      end
    end
  end
end
