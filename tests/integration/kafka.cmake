# Kafka (kafka://) against librdkafka's mock cluster, started in-process by the tests (or
# by `ferry dev kafka`), and Debian's python3-kafka as a client that is not librdkafka.

# tests/conformance/kafka_test.cpp and tests/unit/kafka_offset_tracker_test.cpp are
# globbed into the suites of tests/CMakeLists.txt; they need ferry_kafka (the unit test
# also its private header).
target_link_libraries(ferry_conformance_tests PRIVATE ferry_kafka)
target_link_libraries(ferry_unit_tests PRIVATE ferry_kafka)
target_include_directories(ferry_unit_tests PRIVATE ${PROJECT_SOURCE_DIR}/src/backends/kafka)
