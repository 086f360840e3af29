# Kafka (kafka://) against librdkafka's mock cluster, started in-process by the tests (or
# by `ferry dev kafka`), and Debian's python3-kafka as a client that is not librdkafka.

# tests/conformance/kafka_test.cpp and tests/unit/kafka_offset_tracker_test.cpp are
# globbed into the suites of tests/CMakeLists.txt; they need ferry_kafka (the unit test
# also its private header).
target_link_libraries(ferry_conformance_tests PRIVATE ferry_kafka)
target_link_libraries(ferry_unit_tests PRIVATE ferry_kafka)
target_include_directories(ferry_unit_tests PRIVATE ${PROJECT_SOURCE_DIR}/src/backends/kafka)

# Creating topics through the Admin API, rebalance, handing partitions over, broker down, the producer under pressure, interop with python3-kafka, and `ferry serve` on Kafka.
add_executable(ferry_kafka_integration_tests
  ${CMAKE_CURRENT_LIST_DIR}/kafka_support.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_admin_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_create_topics_front.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_create_topics_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_rebalance_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_handover_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_broker_down_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_producer_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_interop_test.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kafka_serve_test.cpp
  ${PROJECT_SOURCE_DIR}/tests/e2e/e2e_support.cpp)
target_include_directories(ferry_kafka_integration_tests PRIVATE ${PROJECT_SOURCE_DIR}/tests/e2e
                           ${PROJECT_SOURCE_DIR}/tests/support)
target_link_libraries(ferry_kafka_integration_tests PRIVATE ferry_core ferry_kafka GTest::gtest_main
                      SQLite::SQLite3 Boost::json Threads::Threads PkgConfig::RDKAFKA ferry_warnings)
target_compile_definitions(ferry_kafka_integration_tests PRIVATE
  FERRY_BINARY="$<TARGET_FILE:ferry>"
  FERRY_KAFKA_PY_DIR="${CMAKE_CURRENT_LIST_DIR}/python"
  BOOST_ASIO_NO_DEPRECATED)
add_dependencies(ferry_kafka_integration_tests ferry)
gtest_discover_tests(ferry_kafka_integration_tests DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 180)

# Every Kafka test carries the label kafka (ctest -L kafka) besides its suite's label.
# gtest_discover_tests cannot set them: it flattens PROPERTIES, so LABELS "a;b" would give
# the label a and a property named b. Instead a file ctest includes after the discovered
# tests labels those of `target` whose names match `regex`, from the list the discovery
# leaves in <target>_TESTS.
function(ferry_kafka_labels target regex)
  list(JOIN ARGN ";" labels)
  get_target_property(dir ${target} SOURCE_DIR)
  set(file "${CMAKE_CURRENT_BINARY_DIR}/${target}_kafka_labels.cmake")
  file(WRITE "${file}"
       "foreach(ferry_test IN LISTS ${target}_TESTS)\n"
       "  if(ferry_test MATCHES [==[${regex}]==])\n"
       "    set_tests_properties(\"\${ferry_test}\" PROPERTIES LABELS \"${labels}\")\n"
       "  endif()\n"
       "endforeach()\n")
  set_property(DIRECTORY "${dir}" APPEND PROPERTY TEST_INCLUDE_FILES "${file}")
endfunction()
ferry_kafka_labels(ferry_kafka_integration_tests "." integration kafka)
ferry_kafka_labels(ferry_conformance_tests "^kafka/" conformance kafka)
ferry_kafka_labels(ferry_unit_tests "^Kafka" unit kafka)
