// Unit tests for the shared-memory tunnel table: owner, counter writer and reader on real POSIX
// segments named after this test process, stale and live previous owners, corrupt headers, and
// untorn identities while a writer thread rewrites them.
// Every segment and child process a test creates is removed by a guard, also when it fails.
#include "shared/ipc/tunnel_table.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace bip = boost::interprocess;
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
  ~segment_guard() { bip::shared_memory_object::remove(name.c_str()); }
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

// Writes a segment by hand, as another (or a broken) supervisor would have left it.
void write_raw_segment(const std::string& name, std::size_t size, const ipc::table_header& header) {
  bip::shared_memory_object memory(bip::create_only, name.c_str(), bip::read_write);
  if (size == 0) return;  // Boost's truncate uses posix_fallocate, which rejects a length of 0
  memory.truncate(static_cast<bip::offset_t>(size));
  if (size < sizeof(header)) return;
  bip::mapped_region region(memory, bip::read_write);
  std::memcpy(region.get_address(), &header, sizeof(header));
}

ipc::table_header valid_header(std::int64_t pid, std::uint32_t slot_count) {
  ipc::table_header header;
  header.magic = ipc::table_magic;
  header.version = ipc::table_version;
  header.slot_count = slot_count;
  header.slot_size = sizeof(ipc::slot);
  header.supervisor_pid = pid;
  std::strcpy(header.base_domain, "old.example");
  return header;
}

std::size_t table_size(std::uint32_t slot_count) {
  return sizeof(ipc::table_header) + slot_count * sizeof(ipc::slot);
}

void set_text(char* field, std::size_t capacity, const std::string& text) {
  std::memset(field, 0, capacity);
  std::memcpy(field, text.data(), std::min(text.size(), capacity - 1));
}

// Every field derived from n, so a copy mixing two writes is detectable from its tunnel_id.
ipc::slot_identity derived_identity(std::uint64_t n) {
  ipc::slot_identity identity;
  identity.state = n % 2 ? ipc::slot_state::active : ipc::slot_state::held;
  identity.kind = n % 3 ? ipc::tunnel_kind::http : ipc::tunnel_kind::tcp;
  identity.tunnel_id = n;
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
  CHECK(reader.header().slot_size == sizeof(ipc::slot));
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
  }

  SECTION("indexes past the table are refused") {
    CHECK_THROWS_AS(owner.write_identity(4, identity), std::out_of_range);
    CHECK_THROWS_AS(reader.read(4), std::out_of_range);
    CHECK_THROWS_WITH(ipc::slot_counter_writer(owner.name(), 4),
                      Contains("slot 4 is out of range") && Contains("has 4 slots"));
  }
}

namespace {
// Sizes in bytes of this process's mappings of a shared-memory segment (/dev/shm/<name>).
std::vector<std::size_t> mappings_of(const std::string& segment) {
  std::vector<std::size_t> sizes;
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (!line.ends_with("/dev/shm" + segment)) continue;
    const auto dash = line.find('-'), space = line.find(' ');
    sizes.push_back(std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16) -
                    std::stoull(line.substr(0, dash), nullptr, 16));
  }
  return sizes;
}
}  // namespace

TEST_CASE("a worker maps its own slot only, not the table", "[tunnel_table]") {
  const auto instance = unique_instance("ownslot");
  segment_guard guard{ipc::segment_name(instance)};
  ipc::tunnel_table_owner owner(instance, 1024, "example.com");
  const auto before = mappings_of(owner.name());
  REQUIRE(before.size() == 1);  // the owner's whole table
  {
    ipc::slot_counter_writer worker(owner.name(), 1023);
    worker.counters().bytes_in += 7;
    const auto during = mappings_of(owner.name());
    REQUIRE(during.size() == 2);
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    CHECK(std::min(during[0], during[1]) <= 2 * page);  // the slot (the header map is gone)
  }
  ipc::tunnel_table_reader reader(owner.name());
  CHECK(reader.read(1023)->bytes_in == 7);
  CHECK(reader.read(1022)->bytes_in == 0);
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
    header.slot_size = sizeof(ipc::slot) + 8;
    expected = "-byte slots but this program uses " + std::to_string(sizeof(ipc::slot));
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
    const auto n = copy->identity.tunnel_id;
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
