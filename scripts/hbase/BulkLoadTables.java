// Loads the HFiles of several HBase tables in one JVM: HBase's own bulk-load
// tool (BulkLoadHFilesTool, i.e. `completebulkload`) called once per table,
// the tables side by side, instead of one JVM start per table.
//
//   java -cp "$(hbase classpath)" BulkLoadTables.java < PAIRS
//   java -cp "$(hbase classpath)" BulkLoadTables.java DIR TABLE [DIR TABLE ...]
//
// With no arguments (how `falcon-migrate base --hbase-load bulk` runs it) the
// pairs come one per line on stdin, `DIR TABLE`, each loaded as soon as it
// arrives, until stdin closes; the JVM starts, and HBase's client classes and
// a first connection are warmed up, while the migrator is still copying.
// DIR holds <family>/<hfiles> (a file:// or hdfs:// URL). As each table is
// loaded, the line `loaded TABLE` goes to stdout (the migrator records the
// table as loaded on seeing it). Exit 0 when every table is loaded, 1 when
// any failed (the others are still loaded and reported), 2 on bad arguments.
// The tool moves each loaded file out of DIR, so running it again loads only
// what an interrupted run left.
//
// Production (HBase on HDFS): -Dfalcon.bulkload.upload=BASE (a filesystem URL,
// e.g. hdfs://namenode:8020/hbase-staging/falcon; in HBASE_LOADER_OPTS, or
// HBASE_TOOL_OPTS for `scripts/stack.sh hbase-class`) copies each local DIR
// into that filesystem first, in this JVM (its files side by side,
// -Dfalcon.bulkload.upload.threads=16 at most), to BASE/<DIR's last four path
// components> (the migrator's <run>/shard-I-of-N.bulk/hfiles/<table>, so runs
// and shards never share a folder), and loads from there. The copy is written
// under <folder>.uploading and renamed in, replacing what an earlier attempt
// left (never merged with it); DIR itself is left as it is, so a load run
// again uploads and loads every file again, which changes nothing a reader
// sees: cells carry their source versions as timestamps. With HBase's rootdir
// on the same HDFS the region servers rename the uploaded files into the
// regions; on another filesystem (the local stack) they copy them. The
// uploaded folder is left for the operator to remove once the run is done.

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.FileUtil;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RemoteIterator;
import org.apache.hadoop.hbase.HBaseConfiguration;
import org.apache.hadoop.hbase.TableName;
import org.apache.hadoop.hbase.client.AsyncConnection;
import org.apache.hadoop.hbase.client.ConnectionFactory;
import org.apache.hadoop.hbase.tool.BulkLoadHFiles;

public class BulkLoadTables {
  public static void main(String[] args) throws Exception {
    if (args.length % 2 != 0) {
      System.err.println("usage: BulkLoadTables [DIR TABLE ...]   (no arguments: DIR TABLE lines on stdin)");
      System.exit(2);
    }
    Configuration conf = HBaseConfiguration.create();
    // -Dhbase.KEY=VALUE on the JVM's command line (HBASE_LOADER_OPTS) sets the tool's
    // settings, e.g. -Dhbase.loadincremental.threads.max=32 (the regions of a table
    // loaded side by side; HBase's default is the number of cores).
    for (String k : System.getProperties().stringPropertyNames()) {
      if (k.startsWith("hbase.")) {
        conf.set(k, System.getProperty(k));
      }
    }
    ExecutorService pool = Executors.newCachedThreadPool();
    List<String> tables = new ArrayList<>();
    List<Future<?>> loads = new ArrayList<>();
    if (args.length > 0) {
      for (int i = 0; i < args.length; i += 2) {
        tables.add(args[i + 1]);
        loads.add(pool.submit(load(conf, args[i], args[i + 1])));
      }
    } else {
      // While the HFiles are being written: load the client's classes and
      // open (then close) a connection, which each load would otherwise pay.
      try (AsyncConnection c = ConnectionFactory.createAsyncConnection(conf).get()) {
        c.getAdmin().listTableNames().get();
      } catch (Exception e) {
        System.err.println("warm-up connection failed (the loads will try again): " + e);
      }
      BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
      for (String line; (line = in.readLine()) != null;) {
        line = line.trim();
        if (line.isEmpty()) {
          continue;
        }
        String[] pair = line.split("\\s+");
        if (pair.length != 2) {
          System.err.println("not a DIR TABLE line: " + line);
          System.exit(2);
        }
        tables.add(pair[1]);
        loads.add(pool.submit(load(conf, pair[0], pair[1])));
      }
    }
    int failed = 0;
    for (int i = 0; i < loads.size(); i++) {
      try {
        loads.get(i).get();
      } catch (ExecutionException e) {
        failed++;
        if (e.getCause() instanceof UploadFailed) {
          // Its cause last, where the migrator's error (the end of stderr) shows it.
          e.getCause().printStackTrace();
          System.err.println("bulk load of " + tables.get(i) + " failed: " + e.getCause().getMessage());
          continue;
        }
        System.err.println("bulk load of " + tables.get(i) + " failed: " + e.getCause());
        e.getCause().printStackTrace();
      }
    }
    pool.shutdown();
    System.exit(failed == 0 ? 0 : 1);
  }

  static java.util.concurrent.Callable<Void> load(Configuration conf, String dir, String table) {
    String base = System.getProperty("falcon.bulkload.upload");
    return () -> {
      Path from = base == null ? new Path(dir) : upload(conf, dir, base);
      // As the tool's own main: nothing loaded from a folder with files is a failure.
      if (BulkLoadHFiles.create(conf).bulkLoad(TableName.valueOf(table), from).isEmpty()) {
        throw new java.io.IOException("no HFile of " + (base == null ? dir : from) + " was loaded");
      }
      synchronized (System.out) {
        System.out.println("loaded " + table);
        System.out.flush();
      }
      return null;
    };
  }

  // The files of an upload are copied side by side (-Dfalcon.bulkload.upload.threads, 16):
  // closing an HDFS file waits until the DataNode's report of its block reached the
  // NameNode (0.4 s on the local stack), which a copy of one file after another pays per
  // file, i.e. per region.
  static final ExecutorService COPIES =
      Executors.newFixedThreadPool(Integer.getInteger("falcon.bulkload.upload.threads", 16));

  /** An upload that failed: the load was not tried. */
  static class UploadFailed extends IOException {
    UploadFailed(String message, Throwable cause) {
      super(message, cause);
    }
  }

  /**
   * Copies the folder DIR to BASE/<DIR's last four path components> (see the header),
   * written beside and renamed in, and returns where it is.
   */
  static Path upload(Configuration conf, String dir, String base) throws IOException {
    Path src = new Path(dir);
    List<String> tail = new ArrayList<>();
    for (Path p = src; p != null && !p.isRoot() && tail.size() < 4; p = p.getParent()) {
      // HDFS takes no ':' in a name: a namespace's table (ns:table) gets a folder per part.
      tail.add(0, p.getName().replace(':', '/'));
    }
    Path dst = new Path(base + "/" + String.join("/", tail));
    try {
      long t0 = System.nanoTime();
      FileSystem fs = dst.getFileSystem(conf);
      dst = fs.makeQualified(dst);
      Path part = new Path(dst.getParent(), dst.getName() + ".uploading");
      fs.delete(part, true);
      FileSystem srcFs = src.getFileSystem(conf);
      String root = srcFs.makeQualified(src).toUri().getPath();
      List<Future<Boolean>> copies = new ArrayList<>();
      long bytes = 0;
      for (RemoteIterator<LocatedFileStatus> it = srcFs.listFiles(src, true); it.hasNext();) {
        LocatedFileStatus f = it.next();
        Path to = new Path(part, f.getPath().toUri().getPath().substring(root.length() + 1));
        bytes += f.getLen();
        copies.add(COPIES.submit(() -> FileUtil.copy(srcFs, f.getPath(), fs, to, false, conf)));
      }
      for (Future<Boolean> c : copies) {
        if (!c.get()) {
          throw new IOException("a copy into " + part + " reported failure");
        }
      }
      fs.delete(dst, true);
      if (!fs.rename(part, dst)) {
        throw new IOException("cannot rename " + part + " to " + dst);
      }
      System.err.printf("uploaded %s to %s: %d files, %d bytes in %.1f s%n", src, dst,
          copies.size(), bytes, (System.nanoTime() - t0) / 1e9);
      return dst;
    } catch (IOException | InterruptedException e) {
      throw new UploadFailed("upload of " + src + " to " + dst + " failed: " + e, e);
    } catch (ExecutionException e) {
      throw new UploadFailed("upload of " + src + " to " + dst + " failed: " + e.getCause(), e.getCause());
    }
  }
}
