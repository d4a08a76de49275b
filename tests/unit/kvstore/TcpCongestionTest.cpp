// The store's and its clients' UCX TCP sockets get the congestion control
// their options name (ServerOptions / ClientOptions::tcpCongestion, set by
// redirecting UCX's calls to socket(2): TcpCongestion.h); sockets the rest
// of the process opens keep the host's default.
#include "TcpCongestion.h"

#include "llmir/kvstore/Client.h"
#include "llmir/kvstore/Server.h"

#include <gtest/gtest.h>

#include <dirent.h>
#include <fstream>
#include <netinet/in.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace llmir::kvstore;

namespace {

std::string hostDefault() {
  std::ifstream in("/proc/sys/net/ipv4/tcp_congestion_control");
  std::string name;
  in >> name;
  return name;
}

// The congestion control of every open IPv4/IPv6 TCP socket of this process.
std::vector<std::string> openTcpSockets() {
  std::vector<std::string> out;
  DIR *dir = opendir("/proc/self/fd");
  if (!dir)
    return out;
  while (dirent *e = readdir(dir)) {
    int fd = atoi(e->d_name);
    struct stat st {};
    if (fd <= 2 || fd == dirfd(dir) || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
      continue;
    int protocol = 0;
    socklen_t length = sizeof protocol;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &length) == 0 &&
        protocol == IPPROTO_TCP)
      out.push_back(tcpCongestionOf(fd));
  }
  closedir(dir);
  return out;
}

TEST(TcpCongestion, UcxSocketsGetTheNamedAlgorithmOthersKeepTheHostDefault) {
  const std::string host = hostDefault();
  ASSERT_FALSE(host.empty());
  // Reno can always be set (the kernel allows it to every process); on a
  // host whose default is Reno, another allowed one.
  std::string wanted = "reno";
  if (host == "reno") {
    std::ifstream in("/proc/sys/net/ipv4/tcp_allowed_congestion_control");
    for (std::string name; in >> name;)
      if (name != "reno")
        wanted = name;
    if (wanted == "reno")
      GTEST_SKIP() << "no congestion control but the host's default may be set";
  }
  setenv("UCX_TLS", "tcp", 1);
  ServerOptions so;
  so.tcpCongestion = "no-such-algorithm," + wanted; // the first the kernel takes
  so.sharedMemory = false;
  auto server = Server::start(so);
  ASSERT_TRUE(server) << server.message();
  ClientOptions co;
  co.port = (*server)->port();
  co.tcpCongestion = wanted;
  auto client = Client::create(co);
  ASSERT_TRUE(client) << client.message();
  const std::vector<int32_t> tokens{7};
  BlockKeyFields f;
  f.model = "m";
  f.layerEnd = 1;
  f.dtype = "f32";
  f.blockTokens = 1;
  f.tokenPrefix = tokens;
  BlockKey key = *makeBlockKey(f);
  std::vector<uint8_t> block(1 << 20, 0x5a), back(1 << 20);
  std::vector<PutBlock> puts{{key, "f32", block.data(), block.size()}};
  std::vector<GetBlock> gets{{key, "f32", back.data(), back.size()}};
  auto put = (*client)->put(puts);
  ASSERT_TRUE(put) << put.message();
  auto got = (*client)->get(gets);
  ASSERT_TRUE(got) << got.message();
  EXPECT_EQ((*got)[0], BlockStatus::Found);
  EXPECT_EQ(back, block);

  // The connection's two ends (the store's and the client's), the
  // listeners and the connection manager's sockets: all UCX's.
  int named = 0;
  for (const std::string &algorithm : openTcpSockets())
    named += algorithm == wanted;
  EXPECT_GE(named, 2) << "UCX's TCP connection does not use " << wanted;

  // A socket the process opens itself is not UCX's: the host's default.
  int own = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(own, 0);
  EXPECT_EQ(tcpCongestionOf(own), host);
  close(own);
}

TEST(TcpCongestion, AnEmptyListChangesNothing) {
  EXPECT_EQ(useTcpCongestionForUcx(""), 0);
  EXPECT_EQ(useTcpCongestionForUcx(",,"), 0);
}

} // namespace
