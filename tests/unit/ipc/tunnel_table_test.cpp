// Unit tests for the shared-memory tunnel table: owner, counter writer and reader on real POSIX
// segments named after this test process, stale and live previous owners, corrupt headers, and
// untorn identities while a writer thread rewrites them.
// Every segment and child process a test creates is removed by a guard, also when it fails.
#include "shared/ipc/tunnel_table.hpp"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <fstream>
#include <functional>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/skip.hpp"

namespace {

namespace ipc = culvert::shared::ipc;
using Catch::Matchers::Contains;

// Unique per process and per call, so parallel runs and earlier failures never collide.
std::string unique_instance(const std::string& tag) {
  static int counter = 0;
  return "test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

// Removes a segment at scope exit whoever created it (the owner normally does it first).
struct segment_guard {
  std::string name;
  ~segment_guard() { ::shm_unlink(name.c_str()); }
};

// A child process that just waits to be killed; killed and reaped at scope exit.
struct live_child {
  pid_t pid = -1;
  live_child() {
    pid = ::fork();
    if (pid == 0) {
      for (;;) ::pause();
    }
    REQUIRE(pid > 0);
  }
  ~live_child() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
};

// The pid of a process that has exited and been reaped: nothing answers to it (until reuse).
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  REQUIRE(pid > 0);
  REQUIRE(::waitpid(pid, nullptr, 0) == pid);
  return pid;
}

// Writes a segment by hand, as another (or a broken) supervisor would have left it: mode 0644
// unless told otherwise, the header at offset 0.
void write_raw_segment(const std::string& name, std::size_t size, const ipc::table_header& header,
                       mode_t mode = 0644) {
  const int fd = ::shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, mode);
  REQUIRE(fd >= 0);
  REQUIRE(::fchmod(fd, mode) == 0);  // past the umask
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  if (size >= sizeof(header)) REQUIRE(::pwrite(fd, &header, sizeof(header), 0) == sizeof(header));
  ::close(fd);
}

ipc::table_header valid_header(std::int64_t pid, std::uint32_t slot_count) {
  const auto layout = ipc::layout_for(slot_count);
  ipc::table_header header;
  header.magic = ipc::table_magic;
  header.version = ipc::table_version;
  header.slot_count = slot_count;
  header.page_size = static_cast<std::uint32_t>(layout.page_size);
  header.identity_slot_size = sizeof(ipc::identity_slot);
  header.identities_offset = layout.identities_offset;
  header.counters_offset = layout.counters_offset;
  header.segment_size = layout.segment_size;
  header.supervisor_pid = pid;
  std::strcpy(header.base_domain, "old.example");
  return header;
}

std::size_t table_size(std::uint32_t slot_count) {
  return ipc::layout_for(slot_count).segment_size;
}

void set_text(char* field, std::size_t capacity, const std::string& text) {
  std::memset(field, 0, capacity);
  std::memcpy(field, text.data(), std::min(text.size(), capacity - 1));
}

// Every field derived from n, so a copy mixing two writes is detectable from its worker_pid.
ipc::slot_identity derived_identity(std::uint64_t n) {
  ipc::slot_identity identity;
  identity.state = n % 2 ? ipc::slot_state::active : ipc::slot_state::held;
  identity.kind = n % 3 ? ipc::tunnel_kind::http : ipc::tunnel_kind::tcp;
  identity.worker_pid = static_cast<std::int64_t>(n) + 1000;
  identity.created_unix_ms = static_cast<std::int64_t>(n) * 1000;
  identity.public_port = static_cast<std::uint16_t>(n);
  identity.data_connections = static_cast<std::uint16_t>(n * 7);
  identity.worker_restarts = static_cast<std::uint32_t>(n * 3);
  set_text(identity.domain, sizeof(identity.domain),
           "d" + std::to_string(n) + std::string(n % 100, 'x') + ".example");
  set_text(identity.client_addr, sizeof(identity.client_addr),
           "10.0.0." + std::to_string(n % 256) + ":" + std::to_string(n));
  return identity;
}

bool same_identity(const ipc::slot_identity& a, const ipc::slot_identity& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

}  // namespace

TEST_CASE("segment names and enum names", "[tunnel_table]") {
  CHECK(ipc::segment_name("prod") == "/culvert-prod");
  CHECK(ipc::segment_name("") == "/culvert-default");
  CHECK(ipc::to_string(ipc::slot_state::free) == "free");
  CHECK(ipc::to_string(ipc::slot_state::starting) == "starting");
  CHECK(ipc::to_string(ipc::slot_state::active) == "active");
  CHECK(ipc::to_string(ipc::slot_state::held) == "held");
  CHECK(ipc::to_string(ipc::slot_state::stopping) == "stopping");
  CHECK(ipc::to_string(static_cast<ipc::slot_state>(77)) == "unknown");
  CHECK(ipc::to_string(ipc::tunnel_kind::http) == "http");
  CHECK(ipc::to_string(ipc::tunnel_kind::tcp) == "tcp");
  CHECK(ipc::to_string(static_cast<ipc::tunnel_kind>(0)) == "unknown");
}

TEST_CASE("identities and counters round-trip from owner and worker to reader", "[tunnel_table]") {
  const auto instance = unique_instance("roundtrip");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 4, "example.com");
  CHECK(owner.name() == ipc::segment_name(instance));
  CHECK(owner.slot_count() == 4);

  ipc::tunnel_table_reader reader(owner.name());
  CHECK(reader.header().magic == ipc::table_magic);
  CHECK(reader.header().version == ipc::table_version);
  CHECK(reader.header().slot_count == 4);
  CHECK(reader.header().identity_slot_size == sizeof(ipc::identity_slot));
  CHECK(reader.header().counters_offset % reader.header().page_size == 0);
  CHECK(reader.header().supervisor_pid == ::getpid());
  CHECK(reader.header().started_unix_ms > 0);
  CHECK(std::string(reader.header().base_domain) == "example.com");
  CHECK(reader.live_slots().empty());

  const auto identity = derived_identity(41);
  owner.write_identity(2, identity);
  ipc::slot_counter_writer worker(owner.name(), 2);
  worker.counters().open_visitors += 3;
  worker.counters().total_visitors += 10;
  worker.counters().bytes_in += 1500;
  worker.counters().bytes_out += 250000;
  worker.counters().bytes_spliced += 200000;

  const auto live = reader.live_slots();
  REQUIRE(live.size() == 1);
  CHECK(live[0].index == 2);
  CHECK(same_identity(live[0].identity, identity));
  CHECK(live[0].open_visitors == 3);
  CHECK(live[0].total_visitors == 10);
  CHECK(live[0].bytes_in == 1500);
  CHECK(live[0].bytes_out == 250000);
  CHECK(live[0].bytes_spliced == 200000);

  const auto untouched = reader.read(0);
  REQUIRE(untouched);
  CHECK(untouched->identity.state == ipc::slot_state::free);
  CHECK(untouched->bytes_in == 0);

  SECTION("clear returns the slot to the pool with zeroed counters") {
    owner.clear(2);
    CHECK(reader.live_slots().empty());
    const auto cleared = reader.read(2);
    REQUIRE(cleared);
    CHECK(same_identity(cleared->identity, ipc::slot_identity{}));
    CHECK(cleared->open_visitors == 0);
    CHECK(cleared->total_visitors == 0);
    CHECK(cleared->bytes_in == 0);
    CHECK(cleared->bytes_out == 0);
    CHECK(cleared->bytes_spliced == 0);
    // A free slot's counters page is not even read; the next tenant must still start from zero.
    owner.write_identity(2, derived_identity(5));
    const auto reused = reader.read(2);
    REQUIRE(reused);
    CHECK(reused->open_visitors == 0);
    CHECK(reused->total_visitors == 0);
    CHECK(reused->bytes_in == 0);
    CHECK(reused->bytes_out == 0);
    CHECK(reused->bytes_spliced == 0);
  }

  SECTION("indexes past the table are refused") {
    CHECK_THROWS_AS(owner.write_identity(4, identity), std::out_of_range);
    CHECK_THROWS_AS(reader.read(4), std::out_of_range);
    CHECK_THROWS_WITH(ipc::slot_counter_writer(owner.name(), 4),
                      Contains("slot 4 is out of range") && Contains("has 4 slots"));
  }
}

namespace {
struct mapping_info {
  std::size_t size = 0, offset = 0;
  bool writable = false;
};
// This process's mappings of a shared-memory segment (/dev/shm/<name>), from /proc/self/maps.
std::vector<mapping_info> mappings_of(const std::string& segment) {
  std::vector<mapping_info> found;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (!line.ends_with("/dev/shm" + segment)) continue;
    // "start-end perms offset dev inode path"
    std::istringstream fields(line);
    std::string range, perms, offset;
    fields >> range >> perms >> offset;
    const auto dash = range.find('-');
    found.push_back({std::stoull(range.substr(dash + 1), nullptr, 16) -
                         std::stoull(range.substr(0, dash), nullptr, 16),
                     std::stoull(offset, nullptr, 16), perms[1] == 'w'});
  }
  return found;
}

// The one mapping of `segment` this process has besides the owner's whole-table one.
mapping_info worker_mapping(const std::string& segment, std::size_t table_bytes) {
  const auto all = mappings_of(segment);
  std::vector<mapping_info> others;
  for (const auto& m : all)
    if (!(m.offset == 0 && m.size == table_bytes)) others.push_back(m);
  REQUIRE(all.size() == 2);
  REQUIRE(others.size() == 1);
  return others[0];
}

// A unique_ptr-like owner of a descriptor for the tests.
struct fd_guard {
  int fd;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace

TEST_CASE("a worker maps its own counters page only, not the header or other slots",
          "[tunnel_table]") {
  const auto instance = unique_instance("ownslot");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 1024, "example.com");
  const auto& layout = owner.layout();
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  REQUIRE(mappings_of(owner.name()).size() == 1);  // the owner's whole table
  const std::uint32_t active[] = {0, 1, 2, 1023};
  for (const auto index : active) owner.write_identity(index, derived_identity(index + 1));

  for (const std::uint32_t slot : {0u, 1u, 1023u}) {
    DYNAMIC_SECTION("slot " << slot << " by name and by descriptor") {
      const fd_guard fd{owner.duplicate_fd()};
      REQUIRE(fd.fd >= 0);
      CHECK((::fcntl(fd.fd, F_GETFD) & FD_CLOEXEC) != 0);
      CHECK((::fcntl(fd.fd, F_GETFL) & O_ACCMODE) == O_RDWR);
      for (const bool by_fd : {false, true}) {
        INFO((by_fd ? "by descriptor" : "by name"));
        {
          auto worker = by_fd ? ipc::slot_counter_writer(fd.fd, slot, owner.name())
                              : ipc::slot_counter_writer(owner.name(), slot);
          worker.counters().bytes_in += 7;
          // Exactly one page, read-write, at this slot's counters: not the header (offset 0),
          // not the identities, not a neighbour's counters.
          const auto mine = worker_mapping(owner.name(), layout.segment_size);
          CHECK(mine.size == page);
          CHECK(mine.offset == layout.counters_at(slot));
          CHECK(mine.offset >= layout.counters_offset);
          CHECK(mine.writable);
        }
        REQUIRE(mappings_of(owner.name()).size() == 1);  // unmapped with the writer
      }
      ipc::tunnel_table_reader reader(owner.name());
      for (const auto index : active) {
        const auto copy = reader.read(index);
        REQUIRE(copy);
        CHECK(copy->bytes_in == (index == slot ? 14u : 0u));  // 7 by name + 7 by descriptor
      }
    }
  }
}

TEST_CASE("listing an idle table touches no counters page", "[tunnel_table]") {
  const auto instance = unique_instance("idle");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 1000, "example.com");
  owner.write_identity(500, derived_identity(7));
  ipc::slot_counter_writer(owner.name(), 500).counters().bytes_out += 1;
  ipc::tunnel_table_reader reader(owner.name());
  REQUIRE(reader.live_slots().size() == 1);

  // mincore on a fresh read-only mapping: which pages of the segment exist at all.
  const auto& layout = owner.layout();
  const fd_guard fd{::shm_open(owner.name().c_str(), O_RDONLY, 0)};
  REQUIRE(fd.fd >= 0);
  void* base = ::mmap(nullptr, layout.segment_size, PROT_READ, MAP_SHARED, fd.fd, 0);
  REQUIRE(base != MAP_FAILED);
  std::vector<unsigned char> resident(layout.segment_size / layout.page_size);
  REQUIRE(::mincore(base, layout.segment_size, resident.data()) == 0);
  ::munmap(base, layout.segment_size);
  std::size_t counters_pages = 0;
  for (std::size_t page = layout.counters_offset / layout.page_size; page < resident.size(); ++page)
    counters_pages += resident[page] & 1;
  CHECK(counters_pages == 1);  // slot 500's, and no other
}

TEST_CASE("strings that fill their fields are cut to leave a NUL", "[tunnel_table]") {
  const auto instance = unique_instance("truncate");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 1, std::string(300, 'b'));
  ipc::tunnel_table_reader reader(owner.name());
  CHECK(::strnlen(reader.header().base_domain, ipc::domain_capacity) == ipc::domain_capacity - 1);

  ipc::slot_identity identity;
  identity.state = ipc::slot_state::active;
  std::memset(identity.domain, 'a', sizeof(identity.domain));  // no NUL at all
  std::memset(identity.client_addr, 'c', sizeof(identity.client_addr));
  owner.write_identity(0, identity);
  const auto copy = reader.read(0);
  REQUIRE(copy);
  CHECK(::strnlen(copy->identity.domain, ipc::domain_capacity) == ipc::domain_capacity - 1);
  CHECK(::strnlen(copy->identity.client_addr, ipc::client_addr_capacity) ==
        ipc::client_addr_capacity - 1);
}

TEST_CASE("the segment is readable by others and removed with its owner", "[tunnel_table]") {
  const auto instance = unique_instance("lifetime");
  const auto name = ipc::segment_name(instance);
  segment_guard guard{name};
  {
    ipc::tunnel_table_owner owner(instance, 2, "example.com");
    struct stat info {};
    REQUIRE(::stat(("/dev/shm" + name).c_str(), &info) == 0);
    CHECK((info.st_mode & 0777) == 0644);
  }
  CHECK_THROWS_WITH(ipc::tunnel_table_reader(name),
                    "no culvert supervisor is running for instance " + instance + " (segment " +
                        name + " not found)");
  CHECK_THROWS_WITH(ipc::slot_counter_writer(name, 0), Contains("not found"));
}

TEST_CASE("a segment left by a dead supervisor is replaced", "[tunnel_table]") {
  const auto instance = unique_instance("stale");
  const auto name = ipc::segment_name(instance);
  segment_guard guard{name};

  SECTION("its recorded pid has exited") {
    write_raw_segment(name, table_size(8), valid_header(dead_pid(), 8));
  }
  SECTION("it records this very process") {
    write_raw_segment(name, table_size(8), valid_header(::getpid(), 8));
  }
  SECTION("it was never initialized") {
    write_raw_segment(name, 0, {});
  }
  SECTION("it is something else entirely") {
    auto header = valid_header(::getpid(), 8);
    header.magic = 0x1234;
    write_raw_segment(name, table_size(8), header);
  }

  ipc::tunnel_table_owner owner(instance, 3, "new.example");
  ipc::tunnel_table_reader reader(name);
  CHECK(reader.header().supervisor_pid == ::getpid());
  CHECK(reader.header().slot_count == 3);
  CHECK(std::string(reader.header().base_domain) == "new.example");
}

TEST_CASE("a segment whose supervisor still runs is refused and left alone", "[tunnel_table]") {
  const auto instance = unique_instance("live");
  const auto name = ipc::segment_name(instance);
  segment_guard guard{name};
  live_child other;
  write_raw_segment(name, table_size(8), valid_header(other.pid, 8));

  CHECK_THROWS_WITH(ipc::tunnel_table_owner(instance, 3, "new.example"),
                    "another supervisor (pid " + std::to_string(other.pid) +
                        ") owns shared-memory segment " + name + "; use --instance");
  ipc::tunnel_table_reader reader(name);
  CHECK(reader.header().supervisor_pid == other.pid);
  CHECK(reader.header().slot_count == 8);
}

TEST_CASE("readers and counter writers reject segments that are not our table", "[tunnel_table]") {
  const auto instance = unique_instance("corrupt");
  const auto name = ipc::segment_name(instance);
  segment_guard guard{name};
  auto header = valid_header(::getpid(), 4);
  std::size_t size = table_size(4);
  std::string expected;

  SECTION("wrong magic") {
    header.magic = 0x0123456789abcdefULL;
    expected = "is not a culvert tunnel table (magic 0x0123456789abcdef";
  }
  SECTION("newer version") {
    header.version = ipc::table_version + 1;
    expected = "has table version " + std::to_string(ipc::table_version + 1);
  }
  SECTION("different slot layout") {
    header.identity_slot_size = sizeof(ipc::identity_slot) + 8;
    expected = "-byte slots but this program uses " + std::to_string(sizeof(ipc::identity_slot));
  }
  SECTION("a layout for another page size") {
    header.page_size *= 2;
    expected = "has a layout (page size " + std::to_string(header.page_size);
  }
  SECTION("fewer bytes than its slots need") {
    size = table_size(3);
    expected = "is truncated";
  }
  SECTION("smaller than a header") {
    size = 16;
    expected = "16 bytes, smaller than a table header";
  }
  write_raw_segment(name, size, header);

  CHECK_THROWS_WITH(ipc::tunnel_table_reader(name), Contains(name) && Contains(expected));
  CHECK_THROWS_WITH(ipc::slot_counter_writer(name, 0), Contains(name) && Contains(expected));
}

TEST_CASE("readers never see a torn identity while the supervisor rewrites it", "[tunnel_table]") {
  const auto instance = unique_instance("seqlock");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 1, "example.com");
  const ipc::tunnel_table_reader reader(owner.name());

  constexpr std::uint64_t writes = 20000;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (std::uint64_t n = 1; n <= writes; ++n) owner.write_identity(0, derived_identity(n));
    done = true;
  });
  std::uint64_t reads = 0, torn = 0, missed = 0, last_seen = 0;
  bool went_backwards = false;
  // Bounded by the writer's finite loop; one more read after it ends must see the last write.
  for (bool finished = false; !finished;) {
    finished = done.load();
    const auto copy = reader.read(0);
    if (!copy) {
      ++missed;
      continue;
    }
    if (copy->identity.state == ipc::slot_state::free) continue;  // before the first write
    ++reads;
    const auto n = static_cast<std::uint64_t>(copy->identity.worker_pid - 1000);
    if (!same_identity(copy->identity, derived_identity(n))) ++torn;
    if (n < last_seen) went_backwards = true;
    last_seen = n;
  }
  writer.join();
  INFO("reads " << reads << ", missed " << missed);
  CHECK(torn == 0);
  CHECK_FALSE(went_backwards);
  CHECK(reads > 0);
  CHECK(last_seen == writes);
}

TEST_CASE("every process keeps the table's size in private memory, read once", "[tunnel_table]") {
  const auto instance = unique_instance("private");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 4, "example.com");
  ipc::tunnel_table_reader reader(owner.name());
  owner.write_identity(3, derived_identity(3));

  // Someone with write access to the header page claims a far bigger table.
  {
    const fd_guard fd{::shm_open(owner.name().c_str(), O_RDWR, 0)};
    REQUIRE(fd.fd >= 0);
    const std::uint32_t huge = 1u << 30;
    REQUIRE(::pwrite(fd.fd, &huge, sizeof(huge), offsetof(ipc::table_header, slot_count)) ==
            sizeof(huge));
  }
  CHECK(owner.slot_count() == 4);
  CHECK_THROWS_AS(owner.write_identity(4, derived_identity(4)), std::out_of_range);
  CHECK(reader.header().slot_count == 4);
  CHECK_THROWS_AS(reader.read(4), std::out_of_range);
  const auto live = reader.live_slots();  // bounded by the copy: no read past the mapping
  REQUIRE(live.size() == 1);
  CHECK(live[0].index == 3);
  // A reader or worker starting now sees a header that does not match its segment.
  CHECK_THROWS_WITH(ipc::tunnel_table_reader(owner.name()), Contains("has a layout"));
  CHECK_THROWS_WITH(ipc::slot_counter_writer(owner.name(), 0), Contains("has a layout"));
}

namespace {
// Runs `body` in a child process that has dropped to uid:gid 4242 and returns what it reports
// (the child's what() text, or "(no exception)"). Only root can do this.
std::string as_other_user(const std::function<void()>& body) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(pipe_fds[0]);
    std::string report = "(no exception)";
    if (::setgroups(0, nullptr) != 0 || ::setgid(4242) != 0 || ::setuid(4242) != 0) {
      report = "(could not drop to uid 4242)";
    } else {
      try {
        body();
      } catch (const std::exception& e) {
        report = e.what();
      }
    }
    [[maybe_unused]] auto n = ::write(pipe_fds[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string report;
  char buffer[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0;) report.append(buffer, n);
  ::close(pipe_fds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return report;
}

bool exists(const std::string& path) {
  struct stat info {};
  return ::lstat(path.c_str(), &info) == 0;
}
}  // namespace

TEST_CASE("a segment planted by another account is never trusted", "[tunnel_table]") {
  const auto instance = unique_instance("planted");
  const auto name = ipc::segment_name(instance);
  const auto path = ipc::segment_path(name);
  segment_guard guard{name};
  // A "live supervisor" that always exists: what an attacker writes to stop us from starting.
  const auto planted = valid_header(1, 8);

  SECTION("writable by group and others: removed, whoever owns it") {
    write_raw_segment(name, table_size(8), planted, 0666);
    CHECK_THROWS_WITH(ipc::tunnel_table_reader(name),
                      Contains(path) && Contains("mode 0666") &&
                          Contains("writable by group or others; refusing to trust its contents"));
    ipc::tunnel_table_owner owner(instance, 3, "new.example");
    CHECK(ipc::tunnel_table_reader(name).header().supervisor_pid == ::getpid());
  }
  SECTION("a symbolic link: removed, its target left alone") {
    const std::string target = "/tmp/culvert-" + instance + "-target";
    { std::ofstream(target) << "not yours"; }
    REQUIRE(::symlink(target.c_str(), path.c_str()) == 0);
    CHECK_THROWS_WITH(ipc::tunnel_table_reader(name), Contains("is a symbolic link"));
    CHECK_THROWS_WITH(ipc::slot_counter_writer(name, 0), Contains("is a symbolic link"));
    {
      ipc::tunnel_table_owner owner(instance, 3, "new.example");
      struct stat info {};
      REQUIRE(::lstat(path.c_str(), &info) == 0);
      CHECK(S_ISREG(info.st_mode));
    }
    std::ifstream in(target);
    std::string text;
    std::getline(in, text);
    CHECK(text == "not yours");
    ::unlink(target.c_str());
  }
  SECTION("ours, but naming a live process that is not a supervisor (init): stale") {
    write_raw_segment(name, table_size(8), planted);
    ipc::tunnel_table_owner owner(instance, 3, "new.example");
    CHECK(ipc::tunnel_table_reader(name).header().supervisor_pid == ::getpid());
  }
}

TEST_CASE("a segment planted by another account is never trusted (as root)", "[tunnel_table]") {
  if (!culvert::tests::running_as_root())
    return culvert::tests::skip("not root: cannot plant a segment owned by another account");
  const auto instance = unique_instance("planted");
  const auto name = ipc::segment_name(instance);
  const auto path = ipc::segment_path(name);
  segment_guard guard{name};
  // A "live supervisor" that always exists: what an attacker writes to stop us from starting.
  const auto planted = valid_header(1, 8);
  SECTION("owned by another account") {
    write_raw_segment(name, table_size(8), planted);
    REQUIRE(::chown(path.c_str(), 4242, 4242) == 0);
    // A reader sees who owns it; the supervisor (as root) removes it instead of believing pid 1.
    CHECK(ipc::tunnel_table_reader(name).owner_uid() == 4242);
    ipc::tunnel_table_owner owner(instance, 3, "new.example");
    struct stat info {};
    REQUIRE(::stat(path.c_str(), &info) == 0);
    CHECK(info.st_uid == 0);
    CHECK(ipc::tunnel_table_reader(name).header().supervisor_pid == ::getpid());
  }
  SECTION("owned by the account we drop to: trusted like our own") {
    live_child other;  // runs this very program, as a supervisor would
    write_raw_segment(name, table_size(8), valid_header(other.pid, 8));
    REQUIRE(::chown(path.c_str(), 4242, 4242) == 0);
    CHECK_THROWS_WITH(ipc::tunnel_table_owner(instance, 3, "new.example", uid_t{4242}),
                      "another supervisor (pid " + std::to_string(other.pid) +
                          ") owns shared-memory segment " + name + "; use --instance");
    CHECK(exists(path));
  }
  SECTION("owned by someone we cannot remove it from: refused, naming path and owner") {
    write_raw_segment(name, table_size(8), planted);  // owned by root
    const auto report = as_other_user([&] { ipc::tunnel_table_owner(instance, 3, "x.example"); });
    CHECK_THAT(report, Contains("shared-memory segment " + path) && Contains("owner uid 0") &&
                           Contains("was not created by this supervisor's account") &&
                           Contains("use --instance"));
    CHECK(exists(path));
  }
}
