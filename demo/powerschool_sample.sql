-- Sample PowerSchool data for `clever_export.py --demo`.
--
-- A tiny, readable stand-in for a district's PowerSchool (Illinois) database:
-- the same tables and columns the export query reads, loaded into an in-memory
-- SQLite database.  Every student exercises a code or an edge case; the
-- comment on each student says which, and what the export should write.
-- STUDENTRACE holds the ISBE race codes 12-16, as Illinois districts set up
-- that way do (examples/illinois-hispanic-race.toml maps them to give
-- Hispanic students a race; examples/studentrace.toml maps letter codes).

CREATE TABLE students (
    id             INTEGER PRIMARY KEY,
    dcid           INTEGER NOT NULL UNIQUE,
    student_number NUMERIC,
    first_name     TEXT,
    last_name      TEXT,
    enroll_status  INTEGER,
    fedethnicity   -- no type: values arrive as numbers, strings and floats
);
CREATE TABLE s_il_stu_demographics_x (studentsdcid INTEGER, fer);
CREATE TABLE s_il_stu_x (studentsdcid INTEGER, lep);
CREATE TABLE studentrace (studentid INTEGER, racecd TEXT);
CREATE TABLE u_def_ext_students0 (
    studentsdcid     INTEGER,
    custom_ethnicity TEXT,
    custom_race      TEXT,
    custom_lep       TEXT
);

-- 1001: White, not Hispanic, not EL
INSERT INTO students VALUES (101, 5001, 1001, 'Ava', 'Anderson', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5001, 16);
INSERT INTO s_il_stu_x VALUES (5001, 0);
INSERT INTO studentrace VALUES (101, '16');
-- 1002: FER 12 American Indian -> I
INSERT INTO students VALUES (102, 5002, 1002, 'Ben', 'Begay', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5002, 12);
INSERT INTO s_il_stu_x VALUES (5002, 0);
INSERT INTO studentrace VALUES (102, '12');
-- 1003: FER 13 Asian -> A, LEP 1 -> Y
INSERT INTO students VALUES (103, 5003, 1003, 'Chen', 'Li', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5003, 13);
INSERT INTO s_il_stu_x VALUES (5003, 1);
INSERT INTO studentrace VALUES (103, '13');
-- 1004: FER 14 Black -> B
INSERT INTO students VALUES (104, 5004, 1004, 'Dami', 'Okafor', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5004, 14);
INSERT INTO s_il_stu_x VALUES (5004, 0);
INSERT INTO studentrace VALUES (104, '14');
-- 1005: FER 15 Pacific Islander -> P (the original sent I)
INSERT INTO students VALUES (105, 5005, 1005, 'Keoni', 'Kahale', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5005, 15);
INSERT INTO s_il_stu_x VALUES (5005, 0);
INSERT INTO studentrace VALUES (105, '15');
-- 1006: FER 17 two or more -> M
INSERT INTO students VALUES (106, 5006, 1006, 'Maya', 'Reed', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5006, 17);
INSERT INTO s_il_stu_x VALUES (5006, 0);
INSERT INTO studentrace VALUES (106, '16');
INSERT INTO studentrace VALUES (106, '14');
-- 1007: Hispanic: FER 11, race from STUDENTRACE when mapped; non-ASCII name
INSERT INTO students VALUES (107, 5007, 1007, 'José', 'Muñoz', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5007, 11);
INSERT INTO s_il_stu_x VALUES (5007, 1);
INSERT INTO studentrace VALUES (107, '16');
-- 1008: Hispanic with two races -> M when mapped
INSERT INTO students VALUES (108, 5008, 1008, 'Lucía', 'Hernández', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5008, 11);
INSERT INTO s_il_stu_x VALUES (5008, 0);
INSERT INTO studentrace VALUES (108, '16');
INSERT INTO studentrace VALUES (108, '12');
-- 1009: Hispanic with no STUDENTRACE row -> blank race
INSERT INTO students VALUES (109, 5009, 1009, 'Sofía', 'García', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5009, 11);
INSERT INTO s_il_stu_x VALUES (5009, 0);
-- 1010: FEDETHNICITY -1 (unanswered) -> blank, never N
INSERT INTO students VALUES (110, 5010, 1010, 'Noah', 'Nguyen', 0, -1);
INSERT INTO s_il_stu_demographics_x VALUES (5010, 13);
INSERT INTO s_il_stu_x VALUES (5010, 0);
INSERT INTO studentrace VALUES (110, '13');
-- 1011: FEDETHNICITY NULL -> blank; LEP NULL -> N
INSERT INTO students VALUES (111, 5011, 1011, 'Olivia', 'Olsen', 0, NULL);
INSERT INTO s_il_stu_demographics_x VALUES (5011, 16);
INSERT INTO s_il_stu_x VALUES (5011, NULL);
INSERT INTO studentrace VALUES (111, '16');
-- 1012: FER NULL -> blank race
INSERT INTO students VALUES (112, 5012, 1012, 'Priya', 'Patel', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5012, NULL);
INSERT INTO s_il_stu_x VALUES (5012, 0);
INSERT INTO studentrace VALUES (112, '13');
-- 1013: student_number stored as 1013.0 -> 1013
INSERT INTO students VALUES (113, 5013, 1013.0, 'Quinn', 'Quarles', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5013, 16);
INSERT INTO s_il_stu_x VALUES (5013, 0);
INSERT INTO studentrace VALUES (113, '16');
-- 1014: codes as strings: '1', '16.0'
INSERT INTO students VALUES (114, 5014, 1014, 'Rosa', 'Ramírez', 0, '1');
INSERT INTO s_il_stu_demographics_x VALUES (5014, '16.0');
INSERT INTO s_il_stu_x VALUES (5014, '1');
INSERT INTO studentrace VALUES (114, '16');
-- 1015: codes as strings with spaces
INSERT INTO students VALUES (115, 5015, 1015, 'Sam', 'Shah', 0, ' 0 ');
INSERT INTO s_il_stu_demographics_x VALUES (5015, ' 13 ');
INSERT INTO s_il_stu_x VALUES (5015, ' 0 ');
INSERT INTO studentrace VALUES (115, '13');
-- 1016: codes as floats 0.0, 14.0, 1.0
INSERT INTO students VALUES (116, 5016, 1016, 'Tariq', 'Taylor', 0, 0.0);
INSERT INTO s_il_stu_demographics_x VALUES (5016, 14.0);
INSERT INTO s_il_stu_x VALUES (5016, 1.0);
INSERT INTO studentrace VALUES (116, '14');
-- 1017: unknown FER 99 -> blank
INSERT INTO students VALUES (117, 5017, 1017, 'Uma', 'Usman', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5017, 99);
INSERT INTO s_il_stu_x VALUES (5017, 0);
-- 1018: unknown FEDETHNICITY 7 -> blank
INSERT INTO students VALUES (118, 5018, 1018, 'Victor', 'Vega', 0, 7);
INSERT INTO s_il_stu_demographics_x VALUES (5018, 16);
INSERT INTO s_il_stu_x VALUES (5018, 0);
INSERT INTO studentrace VALUES (118, '16');
-- 1019: no demographics row, no S_IL_STU_X row -> blank race, ELL N
INSERT INTO students VALUES (119, 5019, 1019, 'Wen', 'Wu', 0, 0);
INSERT INTO studentrace VALUES (119, '13');
-- 1020: no S_IL_STU_X row -> ELL N
INSERT INTO students VALUES (120, 5020, 1020, 'Xavier', 'Xu', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5020, 13);
INSERT INTO studentrace VALUES (120, '13');
-- 1021: two rows in each extension table -> still one line
INSERT INTO students VALUES (121, 5021, 1021, 'Yara', 'Young', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5021, 16);
INSERT INTO s_il_stu_demographics_x VALUES (5021, 16);
INSERT INTO s_il_stu_x VALUES (5021, 1);
INSERT INTO s_il_stu_x VALUES (5021, 1);
INSERT INTO studentrace VALUES (121, '16');
-- 1022: non-ASCII name
INSERT INTO students VALUES (122, 5022, 1022, 'Zoë', 'Zimmerman', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5022, 16);
INSERT INTO s_il_stu_x VALUES (5022, 0);
INSERT INTO studentrace VALUES (122, '16');
-- 1023
INSERT INTO students VALUES (123, 5023, 1023, 'Łukasz', 'Kowalski', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5023, 16);
INSERT INTO s_il_stu_x VALUES (5023, 0);
INSERT INTO studentrace VALUES (123, '16');
-- 1024
INSERT INTO students VALUES (124, 5024, 1024, 'Amara', 'Diallo', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5024, 14);
INSERT INTO s_il_stu_x VALUES (5024, 1);
INSERT INTO studentrace VALUES (124, '14');
-- 1025
INSERT INTO students VALUES (125, 5025, 1025, 'Hiro', 'Tanaka', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5025, 13);
INSERT INTO s_il_stu_x VALUES (5025, 0);
INSERT INTO studentrace VALUES (125, '13');
-- 1026: Hispanic, STUDENTRACE Black
INSERT INTO students VALUES (126, 5026, 1026, 'Isabella', 'Cruz', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5026, 11);
INSERT INTO s_il_stu_x VALUES (5026, 1);
INSERT INTO studentrace VALUES (126, '14');
-- 1027: Hispanic, STUDENTRACE Asian
INSERT INTO students VALUES (127, 5027, 1027, 'Mateo', 'Flores', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5027, 11);
INSERT INTO s_il_stu_x VALUES (5027, 0);
INSERT INTO studentrace VALUES (127, '13');
-- 1028
INSERT INTO students VALUES (128, 5028, 1028, 'Aiyana', 'Yazzie', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5028, 12);
INSERT INTO s_il_stu_x VALUES (5028, 1);
INSERT INTO studentrace VALUES (128, '12');
-- 1029
INSERT INTO students VALUES (129, 5029, 1029, 'Leilani', 'Akana', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5029, 15);
INSERT INTO s_il_stu_x VALUES (5029, 0);
INSERT INTO studentrace VALUES (129, '15');
-- 1030
INSERT INTO students VALUES (130, 5030, 1030, 'Ethan', 'Brooks', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5030, 17);
INSERT INTO s_il_stu_x VALUES (5030, 0);
INSERT INTO studentrace VALUES (130, '13');
INSERT INTO studentrace VALUES (130, '16');
-- 1031
INSERT INTO students VALUES (131, 5031, 1031, 'Grace', 'Kim', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5031, 13);
INSERT INTO s_il_stu_x VALUES (5031, 0);
INSERT INTO studentrace VALUES (131, '13');
-- 1032: apostrophe in a name
INSERT INTO students VALUES (132, 5032, 1032, 'Liam', 'O''Brien', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5032, 16);
INSERT INTO s_il_stu_x VALUES (5032, 0);
INSERT INTO studentrace VALUES (132, '16');
-- 1033
INSERT INTO students VALUES (133, 5033, 1033, 'Nadia', 'Haddad', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5033, 16);
INSERT INTO s_il_stu_x VALUES (5033, 1);
INSERT INTO studentrace VALUES (133, '16');
-- 1034
INSERT INTO students VALUES (134, 5034, 1034, 'Omar', 'Farouk', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5034, 16);
INSERT INTO s_il_stu_x VALUES (5034, 0);
INSERT INTO studentrace VALUES (134, '16');
-- 1035: Hispanic, three races -> M when mapped
INSERT INTO students VALUES (135, 5035, 1035, 'Camila', 'Santos', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5035, 11);
INSERT INTO s_il_stu_x VALUES (5035, 1);
INSERT INTO studentrace VALUES (135, '16');
INSERT INTO studentrace VALUES (135, '14');
INSERT INTO studentrace VALUES (135, '12');
-- 1036
INSERT INTO students VALUES (136, 5036, 1036, 'Daniel', 'Lee', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5036, 13);
INSERT INTO s_il_stu_x VALUES (5036, 0);
INSERT INTO studentrace VALUES (136, '13');
-- 1037
INSERT INTO students VALUES (137, 5037, 1037, 'Emma', 'Schmidt', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5037, 16);
INSERT INTO s_il_stu_x VALUES (5037, 0);
INSERT INTO studentrace VALUES (137, '16');
-- 1038
INSERT INTO students VALUES (138, 5038, 1038, 'Fatima', 'Bello', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5038, 14);
INSERT INTO s_il_stu_x VALUES (5038, 0);
INSERT INTO studentrace VALUES (138, '14');
-- 1039: Hispanic, STUDENTRACE Pacific Islander
INSERT INTO students VALUES (139, 5039, 1039, 'Gabriel', 'Moreno', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5039, 11);
INSERT INTO s_il_stu_x VALUES (5039, 0);
INSERT INTO studentrace VALUES (139, '15');
-- 1040
INSERT INTO students VALUES (140, 5040, 1040, 'Hana', 'Sato', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5040, 13);
INSERT INTO s_il_stu_x VALUES (5040, 1);
INSERT INTO studentrace VALUES (140, '13');
-- 1041: test student (first name) -> skipped
INSERT INTO students VALUES (141, 5041, 1041, 'Test', 'Student', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5041, 16);
INSERT INTO s_il_stu_x VALUES (5041, 0);
INSERT INTO studentrace VALUES (141, '16');
-- 1042: test student (last name, upper case) -> skipped
INSERT INTO students VALUES (142, 5042, 1042, 'Demo', 'TEST', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5042, 16);
INSERT INTO s_il_stu_x VALUES (5042, 0);
INSERT INTO studentrace VALUES (142, '16');
-- 1043: name only contains 'test' -> NOT skipped
INSERT INTO students VALUES (143, 5043, 1043, 'Testa', 'Jones', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5043, 16);
INSERT INTO s_il_stu_x VALUES (5043, 0);
INSERT INTO studentrace VALUES (143, '16');
-- 1044: graduated (3) -> not exported
INSERT INTO students VALUES (144, 5044, 1044, 'Kai', 'Graduated', 3, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5044, 16);
INSERT INTO s_il_stu_x VALUES (5044, 0);
INSERT INTO studentrace VALUES (144, '16');
-- 1045: transferred out (2) -> not exported
INSERT INTO students VALUES (145, 5045, 1045, 'Lena', 'Transferred', 2, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5045, 16);
INSERT INTO s_il_stu_x VALUES (5045, 0);
INSERT INTO studentrace VALUES (145, '16');
-- 1046: pre-registered (-1) -> not exported
INSERT INTO students VALUES (146, 5046, 1046, 'Milo', 'Preregistered', -1, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5046, 16);
INSERT INTO s_il_stu_x VALUES (5046, 0);
INSERT INTO studentrace VALUES (146, '16');
-- 1047: inactive (1) -> not exported
INSERT INTO students VALUES (147, 5047, 1047, 'Nora', 'Inactive', 1, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5047, 11);
INSERT INTO s_il_stu_x VALUES (5047, 1);
INSERT INTO studentrace VALUES (147, '16');
-- 1048
INSERT INTO students VALUES (148, 5048, 1048, 'Oscar', 'Ortiz', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5048, 11);
INSERT INTO s_il_stu_x VALUES (5048, 0);
INSERT INTO studentrace VALUES (148, '16');
-- 1049
INSERT INTO students VALUES (149, 5049, 1049, 'Pia', 'Lindqvist', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5049, 16);
INSERT INTO s_il_stu_x VALUES (5049, 0);
INSERT INTO studentrace VALUES (149, '16');
-- 1050
INSERT INTO students VALUES (150, 5050, 1050, 'Ravi', 'Iyer', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5050, 13);
INSERT INTO s_il_stu_x VALUES (5050, 0);
INSERT INTO studentrace VALUES (150, '13');
-- 1051
INSERT INTO students VALUES (151, 5051, 1051, 'Sione', 'Tupou', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5051, 15);
INSERT INTO s_il_stu_x VALUES (5051, 1);
INSERT INTO studentrace VALUES (151, '15');
-- 1052
INSERT INTO students VALUES (152, 5052, 1052, 'Talia', 'Ben-David', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5052, 16);
INSERT INTO s_il_stu_x VALUES (5052, 0);
INSERT INTO studentrace VALUES (152, '16');
-- 1053: Hispanic, STUDENTRACE American Indian
INSERT INTO students VALUES (153, 5053, 1053, 'Uriel', 'Mendoza', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5053, 11);
INSERT INTO s_il_stu_x VALUES (5053, 1);
INSERT INTO studentrace VALUES (153, '12');
-- 1054
INSERT INTO students VALUES (154, 5054, 1054, 'Valentina', 'Rossi', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5054, 16);
INSERT INTO s_il_stu_x VALUES (5054, 0);
INSERT INTO studentrace VALUES (154, '16');
-- 1055
INSERT INTO students VALUES (155, 5055, 1055, 'Yusuf', 'Demir', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5055, 16);
INSERT INTO s_il_stu_x VALUES (5055, 0);
INSERT INTO studentrace VALUES (155, '16');

-- 1056: one student entered twice (DCIDs 5056 and 5057) with different
-- values -> no line, a warning naming both DCIDs in the log, skipped with the
-- reason "duplicate student_number with different values"
INSERT INTO students VALUES (156, 5056, 1056, 'Wren', 'Walker', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5056, 16);
INSERT INTO s_il_stu_x VALUES (5056, 0);
INSERT INTO studentrace VALUES (156, '16');
INSERT INTO students VALUES (157, 5057, 1056, 'Wren', 'Walker', 0, 1);
INSERT INTO s_il_stu_demographics_x VALUES (5057, 11);
INSERT INTO s_il_stu_x VALUES (5057, 0);
INSERT INTO studentrace VALUES (157, '14');
-- 1057: two S_IL_STU_X rows that disagree (LEP 1 and 0) -> ELL blank, "conflicting rows"
INSERT INTO students VALUES (158, 5058, 1057, 'Xiadani', 'Xolo', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5058, 13);
INSERT INTO s_il_stu_x VALUES (5058, 1);
INSERT INTO s_il_stu_x VALUES (5058, 0);
INSERT INTO studentrace VALUES (158, '13');
-- 1058: LEP 'Y' is not an Illinois code -> ELL blank, "unknown LEP code Y" (never a guess)
INSERT INTO students VALUES (159, 5059, 1058, 'Yosef', 'Yilmaz', 0, 0);
INSERT INTO s_il_stu_demographics_x VALUES (5059, 16);
INSERT INTO s_il_stu_x VALUES (5059, 'Y');
INSERT INTO studentrace VALUES (159, '16');

-- What PowerSchool holds from last night's import (for --changed-only and --dry-run):
-- every student is current except 1001 and 1006 (stale race) and 1055 (no row yet).
INSERT INTO u_def_ext_students0 VALUES (5001, 'N', 'B', 'N');
INSERT INTO u_def_ext_students0 VALUES (5002, 'N', 'I', 'N');
INSERT INTO u_def_ext_students0 VALUES (5003, 'N', 'A', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5004, 'N', 'B', 'N');
INSERT INTO u_def_ext_students0 VALUES (5005, 'N', 'P', 'N');
INSERT INTO u_def_ext_students0 VALUES (5006, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5007, 'Y', '', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5008, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5009, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5010, '', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5011, '', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5012, 'N', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5013, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5014, 'Y', 'W', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5015, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5016, 'N', 'B', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5017, 'N', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5018, '', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5019, 'N', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5020, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5021, 'N', 'W', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5022, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5023, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5024, 'N', 'B', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5025, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5026, 'Y', '', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5027, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5028, 'N', 'I', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5029, 'N', 'P', 'N');
INSERT INTO u_def_ext_students0 VALUES (5030, 'N', 'M', 'N');
INSERT INTO u_def_ext_students0 VALUES (5031, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5032, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5033, 'N', 'W', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5034, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5035, 'Y', '', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5036, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5037, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5038, 'N', 'B', 'N');
INSERT INTO u_def_ext_students0 VALUES (5039, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5040, 'N', 'A', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5043, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5048, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5049, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5050, 'N', 'A', 'N');
INSERT INTO u_def_ext_students0 VALUES (5051, 'N', 'P', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5052, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5053, 'Y', '', 'Y');
INSERT INTO u_def_ext_students0 VALUES (5054, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5056, 'N', 'W', 'N');
INSERT INTO u_def_ext_students0 VALUES (5057, 'Y', '', 'N');
INSERT INTO u_def_ext_students0 VALUES (5058, 'N', 'A', '');
INSERT INTO u_def_ext_students0 VALUES (5059, 'N', 'W', '');
