// Loads the HFiles of several HBase tables in one JVM: HBase's own bulk-load
// tool (BulkLoadHFilesTool, i.e. `completebulkload`) called once per table,
// the tables side by side, instead of one JVM start per table.
//
//   java -cp "$(hbase classpath)" BulkLoadTables.java DIR TABLE [DIR TABLE ...]
//
// DIR holds <family>/<hfiles> (a file:// or hdfs:// URL). As each table is
// loaded, the line `loaded TABLE` goes to stdout (the migrator records the
// table as loaded on seeing it). Exit 0 when every table is loaded, 1 when
// any failed (the others are still loaded and reported), 2 on bad arguments.
// The tool moves each loaded file out of DIR, so running it again loads only
// what an interrupted run left.

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.hbase.HBaseConfiguration;
import org.apache.hadoop.hbase.TableName;
import org.apache.hadoop.hbase.tool.BulkLoadHFiles;

public class BulkLoadTables {
  public static void main(String[] args) throws Exception {
    if (args.length == 0 || args.length % 2 != 0) {
      System.err.println("usage: BulkLoadTables DIR TABLE [DIR TABLE ...]");
      System.exit(2);
    }
    Configuration conf = HBaseConfiguration.create();
    int n = args.length / 2;
    ExecutorService pool = Executors.newFixedThreadPool(n);
    List<Future<?>> loads = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      String dir = args[2 * i];
      String table = args[2 * i + 1];
      loads.add(pool.submit(() -> {
        // As the tool's own main: nothing loaded from a folder with files is a failure.
        if (BulkLoadHFiles.create(conf).bulkLoad(TableName.valueOf(table), new Path(dir)).isEmpty()) {
          throw new java.io.IOException("no HFile of " + dir + " was loaded");
        }
        synchronized (System.out) {
          System.out.println("loaded " + table);
          System.out.flush();
        }
        return null;
      }));
    }
    int failed = 0;
    for (int i = 0; i < n; i++) {
      try {
        loads.get(i).get();
      } catch (ExecutionException e) {
        failed++;
        System.err.println("bulk load of " + args[2 * i + 1] + " failed: " + e.getCause());
        e.getCause().printStackTrace();
      }
    }
    pool.shutdown();
    System.exit(failed == 0 ? 0 : 1);
  }
}
